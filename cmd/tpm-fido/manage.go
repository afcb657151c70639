package main

import (
	"bufio"
	"bytes"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/google/go-tpm/tpm2/transport"
	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"
	"golang.org/x/sys/unix"

	"github.com/tpm-fido/tpm-fido/tpmstore"
)

// The everyday commands (list, delete, pin, reset) open the key store
// directly. They share these seams so tests can use the TPM simulator and
// feed answers on stdin.
var (
	openTPM               = func(spec string) (transport.TPMCloser, error) { return tpmstore.OpenTPM(spec) }
	stdin       io.Reader = os.Stdin
	stateDBName           = "state.db" // tpmstore's database file in the state directory
)

// errDaemonRunning: the state database is locked by a running daemon.
var errDaemonRunning = errors.New("the daemon is running and holds the state; stop it (systemctl --user stop tpm-fido) or use a FIDO client (fido2-token)")

// storeFlags are the flags the store commands share.
type storeFlags struct {
	tpm      string
	stateDir string
}

func addStoreFlags(fl *flag.FlagSet) *storeFlags {
	sf := &storeFlags{}
	fl.StringVar(&sf.tpm, "tpm", tpmstore.DefaultTPM, "the TPM, a `SPEC`: a device path or swtpm:SOCKET")
	fl.StringVar(&sf.stateDir, "state-dir", manageStateDir(), "`DIR` for the state (credentials, PIN, counter)")
	return sf
}

// manageStateDir is the user daemon's state directory:
// $XDG_DATA_HOME/tpm-fido, else ~/.local/share/tpm-fido.
func manageStateDir() string {
	if d := os.Getenv("XDG_DATA_HOME"); d != "" {
		return filepath.Join(d, "tpm-fido")
	}
	if home, err := os.UserHomeDir(); err == nil {
		return filepath.Join(home, ".local", "share", "tpm-fido")
	}
	return ""
}

// stateExists reports whether the state directory holds a database.
func (sf *storeFlags) stateExists() bool {
	_, err := os.Stat(filepath.Join(sf.stateDir, stateDBName))
	return err == nil
}

// checkUnlocked fails fast with errDaemonRunning when another process
// holds the state database, before touching the TPM (a swtpm socket
// serves one connection at a time, so the TPM could hang instead).
func (sf *storeFlags) checkUnlocked() error {
	path := filepath.Join(sf.stateDir, stateDBName)
	db, err := bolt.Open(path, 0o600, &bolt.Options{ReadOnly: true, Timeout: 500 * time.Millisecond})
	switch {
	case err == nil:
		return db.Close()
	case errors.Is(err, fs.ErrNotExist):
		return nil
	case errors.Is(err, berrors.ErrTimeout):
		return errDaemonRunning
	}
	return nil // tpmstore.Open reports anything else precisely
}

// open opens the TPM and the store. The returned close function closes
// both.
func (sf *storeFlags) open() (*tpmstore.Store, func(), error) {
	if sf.stateDir == "" {
		return nil, nil, errors.New("no state directory: set --state-dir or $HOME")
	}
	if err := sf.checkUnlocked(); err != nil {
		return nil, nil, err
	}
	tpm, err := openTPM(sf.tpm)
	if err != nil {
		return nil, nil, err
	}
	s, err := tpmstore.Open(tpmstore.Config{TPM: tpm, Dir: sf.stateDir})
	if err != nil {
		tpm.Close()
		if errors.Is(err, berrors.ErrTimeout) {
			return nil, nil, errDaemonRunning
		}
		return nil, nil, err
	}
	return s, func() { s.Close(); tpm.Close() }, nil
}

// fail prints a runtime error and returns exitFail.
func fail(stderr io.Writer, cmd string, err error) int {
	fmt.Fprintf(stderr, "tpm-fido %s: %v\n", cmd, err)
	return exitFail
}

// decodeCredID accepts a credential ID as printed by list (base64url
// without padding), padded or standard base64, or hex.
func decodeCredID(s string) ([]byte, error) {
	s = strings.TrimSpace(s)
	for _, enc := range []*base64.Encoding{base64.RawURLEncoding, base64.URLEncoding, base64.RawStdEncoding, base64.StdEncoding} {
		if b, err := enc.DecodeString(s); err == nil && len(b) > 0 {
			return b, nil
		}
	}
	if b, err := hex.DecodeString(s); err == nil && len(b) > 0 {
		return b, nil
	}
	return nil, fmt.Errorf("credential ID %q is neither base64url nor hex", s)
}

// isCredIDArg reports whether s can be (the start of) a credential ID as
// list prints it, or a whole one in hex or standard base64.
func isCredIDArg(s string) bool {
	if s == "" {
		return false
	}
	for _, r := range s {
		if !(r >= 'A' && r <= 'Z' || r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || strings.ContainsRune("-_+/=", r)) {
			return false
		}
	}
	return true
}

// findResident returns the resident credentials that arg names: the one
// whose whole ID it is (any encoding decodeCredID takes), else every one
// whose ID, as list prints it, starts with arg.
func findResident(s *tpmstore.Store, arg string) ([]tpmstore.Resident, error) {
	rps, err := s.ResidentRPs()
	if err != nil {
		return nil, err
	}
	whole, _ := decodeCredID(arg)
	var prefixed []tpmstore.Resident
	for _, rp := range rps {
		creds, err := s.Residents(rp.Hash)
		if err != nil {
			return nil, err
		}
		for _, c := range creds {
			if whole != nil && bytes.Equal(c.CredentialID, whole) {
				return []tpmstore.Resident{c}, nil
			}
			if strings.HasPrefix(base64.RawURLEncoding.EncodeToString(c.CredentialID), arg) {
				prefixed = append(prefixed, c)
			}
		}
	}
	return prefixed, nil
}

// describe names a resident credential for people: its RP and user.
func describe(c tpmstore.Resident) string {
	user := c.User.Name
	if user == "" {
		user = "user id " + hex.EncodeToString(c.User.ID)
	}
	return c.RPID + ", " + user
}

func runDelete(args []string, stdout, stderr io.Writer) int {
	fl := newFlagSet("delete", "delete [FLAGS] ID",
		"Delete one resident credential, after asking. ID is the credential's ID as\n"+
			"'tpm-fido list' shows it, or its first characters when no other ID starts\n"+
			"with them (hex is accepted too).")
	sf := addStoreFlags(fl.FlagSet)
	yes := fl.Bool("yes", false, "delete without asking")
	if code, ok := fl.parse(args, 0, 1, stdout, stderr); !ok {
		return code
	}
	if fl.NArg() == 0 {
		return fl.usageError(stderr, "needs a credential ID (as tpm-fido list shows it, or the start of it)")
	}
	arg := strings.TrimSpace(fl.Arg(0))
	if !isCredIDArg(arg) {
		return fl.usageError(stderr, "%q is not a credential ID (base64url as tpm-fido list shows it, or hex)", arg)
	}
	if !sf.stateExists() {
		return fail(stderr, "delete", fmt.Errorf("no state in %s: there are no credentials", sf.stateDir))
	}
	s, closeAll, err := sf.open()
	if err != nil {
		return fail(stderr, "delete", err)
	}
	found, err := findResident(s, arg)
	closeAll() // not held open while the user answers
	switch {
	case err != nil:
		return fail(stderr, "delete", err)
	case len(found) == 0:
		return fail(stderr, "delete", fmt.Errorf("no resident credential with an ID that starts with %q (see tpm-fido list)", arg))
	case len(found) > 1:
		return fail(stderr, "delete", fmt.Errorf("%d credentials have an ID that starts with %q: give more of it (see tpm-fido list)", len(found), arg))
	}
	c := found[0]
	id := base64.RawURLEncoding.EncodeToString(c.CredentialID)
	if !*yes {
		fmt.Fprintf(stderr, "Delete the credential for %s (ID %s)?\nIt cannot be undone: the key stops working for that account. [y/N] ", describe(c), id)
		answer, err := bufio.NewReader(stdin).ReadString('\n')
		if err != nil && answer == "" {
			fmt.Fprintln(stderr)
			return fail(stderr, "delete", errors.New("no answer: nothing was deleted (--yes deletes without asking)"))
		}
		if a := strings.ToLower(strings.TrimSpace(answer)); a != "y" && a != "yes" {
			fmt.Fprintln(stderr, "not deleted")
			return exitFail
		}
	}
	s, closeAll, err = sf.open()
	if err != nil {
		return fail(stderr, "delete", err)
	}
	defer closeAll()
	if err := s.DeleteResident(c.CredentialID); err != nil {
		if errors.Is(err, tpmstore.ErrNotFound) {
			return fail(stderr, "delete", errors.New("the credential is gone already (see tpm-fido list)"))
		}
		return fail(stderr, "delete", err)
	}
	fmt.Fprintf(stdout, "deleted %s (%s)\n", id, describe(c))
	return exitOK
}

func runReset(args []string, stdout, stderr io.Writer) int {
	fl := newFlagSet("reset", "reset [FLAGS]",
		"Delete every credential and the PIN, after you type YES. Every key made\n"+
			"before stops working everywhere.")
	sf := addStoreFlags(fl.FlagSet)
	if code, ok := fl.parse(args, 0, 0, stdout, stderr); !ok {
		return code
	}
	if !sf.stateExists() {
		fmt.Fprintf(stdout, "no state in %s: nothing to reset\n", sf.stateDir)
		return exitOK
	}
	if err := sf.checkUnlocked(); err != nil {
		return fail(stderr, "reset", err)
	}
	fmt.Fprint(stderr, "This deletes every credential made by this key (websites and SSH keys stop working) and the PIN.\nType YES to continue: ")
	answer, err := bufio.NewReader(stdin).ReadString('\n')
	if err != nil && answer == "" {
		return fail(stderr, "reset", errors.New("no answer: nothing was reset"))
	}
	if strings.TrimSpace(answer) != "YES" {
		fmt.Fprintln(stderr, "not confirmed: nothing was reset")
		return exitFail
	}
	s, closeAll, err := sf.open()
	if errors.Is(err, tpmstore.ErrStaleState) {
		// A copy of the state older than the last reset, or its TPM
		// objects were removed: reset it from what is left.
		tpm, terr := openTPM(sf.tpm)
		if terr != nil {
			return fail(stderr, "reset", terr)
		}
		defer tpm.Close()
		if err := tpmstore.RecoverStale(tpmstore.Config{TPM: tpm, Dir: sf.stateDir}); err != nil {
			return fail(stderr, "reset", err)
		}
		fmt.Fprintln(stdout, "reset: the stale state was reset; every credential and the PIN are gone")
		return 0
	}
	if err != nil {
		return fail(stderr, "reset", err)
	}
	defer closeAll()
	if err := s.Reset(); err != nil {
		return fail(stderr, "reset", err)
	}
	fmt.Fprintln(stdout, "reset: every credential and the PIN are gone")
	return exitOK
}

// isTerminal reports whether f is a terminal.
func isTerminal(f *os.File) bool {
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}
