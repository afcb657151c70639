package main

import (
	"crypto/ecdsa"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"io"
	"strings"

	"golang.org/x/crypto/ssh"
)

func runList(args []string, stdout, stderr io.Writer) int {
	fl := newFlagSet("list", "list [--tpm T] [--state-dir D] [--authorized-keys]", stderr)
	sf := addStoreFlags(fl)
	akOnly := fl.Bool("authorized-keys", false, "print only the SSH keys, as authorized_keys lines")
	if err := fl.Parse(args); err != nil {
		return 2
	}
	if fl.NArg() != 0 {
		fl.Usage()
		return 2
	}
	if !sf.stateExists() {
		if !*akOnly {
			fmt.Fprintf(stdout, "no resident credentials (no state in %s yet)\n", sf.stateDir)
		}
		return 0
	}
	s, closeAll, err := sf.open()
	if err != nil {
		return fail(stderr, "list", err)
	}
	defer closeAll()
	rps, err := s.ResidentRPs()
	if err != nil {
		return fail(stderr, "list", err)
	}
	if len(rps) == 0 && !*akOnly {
		fmt.Fprintln(stdout, "no resident credentials")
	}
	for _, rp := range rps {
		creds, err := s.Residents(rp.Hash)
		if err != nil {
			return fail(stderr, "list", err)
		}
		ssh := strings.HasPrefix(rp.ID, "ssh:")
		if !*akOnly {
			name := ""
			if rp.Name != "" && rp.Name != rp.ID {
				name = " (" + rp.Name + ")"
			}
			fmt.Fprintf(stdout, "%s%s: %d resident credential(s)\n", rp.ID, name, len(creds))
		}
		for _, c := range creds {
			var line string
			if ssh && c.PublicKey != nil {
				line, err = authorizedKey(c.PublicKey, rp.ID, "tpm-fido "+rp.ID)
				if err != nil {
					return fail(stderr, "list", err)
				}
			}
			if *akOnly {
				if line != "" {
					fmt.Fprintln(stdout, line)
				}
				continue
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
		}
	}
	return 0
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
