package main

import (
	"bufio"
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
	fl.StringVar(&sf.tpm, "tpm", tpmstore.DefaultTPM, "TPM: a device path or swtpm:SOCKET")
	fl.StringVar(&sf.stateDir, "state-dir", manageStateDir(), "state directory")
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

// newFlagSet returns a flag set that reports to stderr.
func newFlagSet(name, usage string, stderr io.Writer) *flag.FlagSet {
	fl := flag.NewFlagSet(name, flag.ContinueOnError)
	fl.SetOutput(stderr)
	fl.Usage = func() {
		fmt.Fprintln(stderr, "usage: tpm-fido "+usage)
		fl.PrintDefaults()
	}
	return fl
}

func fail(stderr io.Writer, cmd string, err error) int {
	fmt.Fprintf(stderr, "tpm-fido %s: %v\n", cmd, err)
	return 1
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

func runDelete(args []string, stdout, stderr io.Writer) int {
	fl := newFlagSet("delete", "delete [--tpm T] [--state-dir D] CREDID", stderr)
	sf := addStoreFlags(fl)
	if err := fl.Parse(args); err != nil {
		return 2
	}
	if fl.NArg() != 1 {
		fl.Usage()
		return 2
	}
	id, err := decodeCredID(fl.Arg(0))
	if err != nil {
		return fail(stderr, "delete", err)
	}
	if !sf.stateExists() {
		return fail(stderr, "delete", fmt.Errorf("no state in %s: there are no credentials", sf.stateDir))
	}
	s, closeAll, err := sf.open()
	if err != nil {
		return fail(stderr, "delete", err)
	}
	defer closeAll()
	if err := s.DeleteResident(id); err != nil {
		if errors.Is(err, tpmstore.ErrNotFound) {
			return fail(stderr, "delete", errors.New("no resident credential with that ID (see tpm-fido list)"))
		}
		return fail(stderr, "delete", err)
	}
	fmt.Fprintln(stdout, "deleted", base64.RawURLEncoding.EncodeToString(id))
	return 0
}

func runReset(args []string, stdout, stderr io.Writer) int {
	fl := newFlagSet("reset", "reset [--tpm T] [--state-dir D]", stderr)
	sf := addStoreFlags(fl)
	if err := fl.Parse(args); err != nil {
		return 2
	}
	if fl.NArg() != 0 {
		fl.Usage()
		return 2
	}
	if !sf.stateExists() {
		fmt.Fprintf(stdout, "no state in %s: nothing to reset\n", sf.stateDir)
		return 0
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
		return 1
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
	return 0
}

// isTerminal reports whether f is a terminal.
func isTerminal(f *os.File) bool {
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}
