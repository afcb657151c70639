package main

import (
	"crypto/ecdsa"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"io"
	"strings"

	"golang.org/x/crypto/ssh"

	"github.com/tpm-fido/tpm-fido/tpmstore"
)

func runList(args []string, stdout, stderr io.Writer) int {
	fl := newFlagSet("list", "list [FLAGS]",
		"List the resident credentials by relying party; SSH ones also as\n"+
			"authorized_keys lines.")
	sf := addStoreFlags(fl.FlagSet)
	akOnly := fl.Bool("authorized-keys", false, "print only the SSH keys, as authorized_keys lines")
	if code, ok := fl.parse(args, 0, 0, stdout, stderr); !ok {
		return code
	}
	exists, err := sf.examine()
	if err != nil {
		return fail(stderr, "list", err)
	}
	if !exists {
		if !*akOnly {
			fmt.Fprintf(stdout, "no resident credentials (no state in %s yet)\n", sf.stateDir)
		}
		return exitOK
	}
	s, closeAll, err := sf.openExamined()
	if err != nil {
		return fail(stderr, "list", err)
	}
	defer closeAll()
	rps, err := s.ResidentRPs()
	if err != nil {
		return fail(stderr, "list", sf.explain(err))
	}
	if len(rps) == 0 && !*akOnly {
		fmt.Fprintln(stdout, "no resident credentials")
	}
	total := 0
	for _, rp := range rps {
		total += rp.Count
		if err := listRP(stdout, s, rp, *akOnly); err != nil {
			return fail(stderr, "list", sf.explain(err))
		}
	}
	if !*akOnly {
		rpWord := "relying parties"
		if len(rps) == 1 {
			rpWord = "relying party"
		}
		fmt.Fprintf(stdout, "%d of %d resident credentials used, %d %s\n", total, s.MaxResidents(), len(rps), rpWord)
	}
	return exitOK
}

// countNoun is "1 thing" or "n things".
func countNoun(n int, noun string) string {
	if n == 1 {
		return "1 " + noun
	}
	return fmt.Sprintf("%d %ss", n, noun)
}

// listPage is how many credentials list reads at a time, so its memory
// stays flat however many an RP has.
const listPage = 256

// listRP prints one RP's credentials, newest first.
func listRP(stdout io.Writer, s *tpmstore.Store, rp tpmstore.RP, akOnly bool) error {
	ssh := strings.HasPrefix(rp.ID, "ssh:")
	if !akOnly {
		name := ""
		if rp.Name != "" && rp.Name != rp.ID {
			name = fmt.Sprintf(" %q", rp.Name)
		}
		// No colon after the RP ID: SSH's is "ssh:" already.
		fmt.Fprintf(stdout, "%s%s (%s)\n", rp.ID, name, countNoun(rp.Count, "resident credential"))
	}
	var cur tpmstore.Cursor
	for {
		creds, next, err := s.ListResidents(rp.Hash, tpmstore.AllResidents, cur, listPage)
		if err != nil {
			return err
		}
		for _, c := range creds {
			if err := printResident(stdout, rp, c, ssh, akOnly); err != nil {
				return err
			}
		}
		if len(creds) < listPage {
			return nil
		}
		cur = next
	}
}

func printResident(stdout io.Writer, rp tpmstore.RP, c tpmstore.Resident, ssh, akOnly bool) error {
	var line string
	if ssh && c.PublicKey != nil {
		var err error
		if line, err = authorizedKey(c.PublicKey, rp.ID, "tpm-fido "+rp.ID); err != nil {
			return err
		}
	}
	if akOnly {
		if line != "" {
			fmt.Fprintln(stdout, line)
		}
		return nil
	}
	fmt.Fprintf(stdout, "  id:          %s\n", base64.RawURLEncoding.EncodeToString(c.CredentialID))
	user := c.User.Name
	if c.User.DisplayName != "" && c.User.DisplayName != c.User.Name {
		user += " (" + c.User.DisplayName + ")"
	}
	fmt.Fprintf(stdout, "  user:        %s [id %s]\n", user, hex.EncodeToString(c.User.ID))
	created := "unknown"
	if !c.Created.IsZero() {
		created = c.Created.UTC().Format("2006-01-02 15:04:05Z")
	}
	fmt.Fprintf(stdout, "  created:     %s, credProtect %d\n", created, max(c.CredProtect, 1))
	if line != "" {
		fmt.Fprintf(stdout, "  ssh key:     %s\n", line)
	}
	return nil
}

// skECDSAKey is the SSH wire format of an sk-ecdsa-sha2-nistp256 public
// key (OpenSSH PROTOCOL.u2f): key type, curve, the uncompressed point Q,
// and the application (the FIDO relying party ID, "ssh:" by default).
type skECDSAKey struct {
	Type        string
	Curve       string
	Q           []byte
	Application string
}

// authorizedKey returns pub as an authorized_keys line for an OpenSSH
// security-key credential of application app, with comment.
func authorizedKey(pub *ecdsa.PublicKey, app, comment string) (string, error) {
	ek, err := pub.ECDH()
	if err != nil {
		return "", fmt.Errorf("public key: %w", err)
	}
	wire := ssh.Marshal(skECDSAKey{ssh.KeyAlgoSKECDSA256, "nistp256", ek.Bytes(), app})
	// Parse it back: what we print must be what sshd reads.
	pk, err := ssh.ParsePublicKey(wire)
	if err != nil {
		return "", fmt.Errorf("ssh public key: %w", err)
	}
	line := strings.TrimSuffix(string(ssh.MarshalAuthorizedKey(pk)), "\n")
	if comment != "" {
		line += " " + comment
	}
	return line, nil
}
