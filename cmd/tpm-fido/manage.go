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
	"log/slog"
	"os"
	"path/filepath"
	"strings"

	"github.com/google/go-tpm/tpm2/transport"
	"golang.org/x/sys/unix"

	"github.com/tpm-fido/tpm-fido/tpmstore"
)

// The everyday commands (list, delete, pin, reset) open the key store
// directly. They share these seams so tests can use the TPM simulator and
// feed answers on stdin.
var (
	openTPM           = func(spec string) (transport.TPMCloser, error) { return tpmstore.OpenTPM(spec) }
	stdin   io.Reader = os.Stdin
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

// examine looks at the state before anything else is touched: whether
// it exists, and an error (with the way out) when it is damaged,
// unreadable or held by the running daemon. It never changes anything.
func (sf *storeFlags) examine() (exists bool, err error) {
	if sf.stateDir == "" {
		return false, errors.New("no state directory: set --state-dir or $HOME")
	}
	st, err := tpmstore.CheckState(sf.stateDir)
	switch {
	case err != nil:
		return st.Exists, sf.explain(err)
	case st.InUse:
		return true, errDaemonRunning
	}
	return st.Exists, nil
}

// resetCommand is how the user runs reset on this state directory.
func (sf *storeFlags) resetCommand() string {
	if sf.stateDir == manageStateDir() {
		return "tpm-fido reset"
	}
	return "tpm-fido reset --state-dir " + sf.stateDir
}

// explain adds the way out to an error about damaged or unreadable
// state; other errors are returned as they are.
func (sf *storeFlags) explain(err error) error {
	return explainState(err, sf.stateDir, sf.resetCommand())
}

// explainState adds the way out to an error about damaged or unreadable
// state in dir.
func explainState(err error, dir, reset string) error {
	db := tpmstore.StatePath(dir)
	switch {
	case errors.Is(err, tpmstore.ErrStateUnreadable):
		return fmt.Errorf("%w\nNothing was changed. If the state is yours, give it back to your user: sudo chown -R \"$USER\": %s && chmod 700 %s\nTo start afresh instead (every credential made with this key is lost): %s", err, dir, dir, reset)
	case errors.Is(err, tpmstore.ErrCorruptState):
		return fmt.Errorf("%w\nThe state in %s is damaged; nothing was changed. Restore %s from a backup if you have one, or start afresh (every credential made with this key is lost): %s", err, dir, db, reset)
	case errors.Is(err, tpmstore.ErrForeignTPM):
		return fmt.Errorf("%w\nNothing was changed. If the state belongs to another machine, move %s away; to start afresh here (every credential in it is lost): %s", err, dir, reset)
	}
	return err
}

// open examines the state, then opens the TPM and the store. The
// returned close function closes both.
func (sf *storeFlags) open() (*tpmstore.Store, func(), error) {
	if _, err := sf.examine(); err != nil {
		return nil, nil, err
	}
	return sf.openExamined()
}

// openExamined is open right after the caller's own examine found the
// state usable and not held by the daemon: it does not examine the state
// again (tpmstore.Open checks it once more, before bbolt maps it).
func (sf *storeFlags) openExamined() (*tpmstore.Store, func(), error) {
	tpm, err := openTPM(sf.tpm)
	if err != nil {
		return nil, nil, err
	}
	s, err := tpmstore.Open(tpmstore.Config{TPM: tpm, Dir: sf.stateDir})
	if err != nil {
		tpm.Close()
		if errors.Is(err, tpmstore.ErrStateInUse) {
			return nil, nil, errDaemonRunning
		}
		return nil, nil, sf.explain(err)
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
	exists, err := sf.examine()
	if err != nil {
		return fail(stderr, "delete", err)
	}
	if !exists {
		return fail(stderr, "delete", fmt.Errorf("no state in %s: there are no credentials", sf.stateDir))
	}
	s, closeAll, err := sf.openExamined()
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
		return fail(stderr, "delete", sf.explain(err))
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
	exists, err := sf.examine()
	var bad *tpmstore.StateError
	switch {
	case errors.As(err, &bad):
		// Damaged or unreadable: reset is the way out, so it removes what
		// cannot be used, once the user agrees.
		return resetUnusable(sf, bad, stdout, stderr)
	case err != nil:
		return fail(stderr, "reset", err)
	case !exists:
		fmt.Fprintf(stdout, "no state in %s: nothing to reset\n", sf.stateDir)
		return exitOK
	}
	fmt.Fprint(stderr, "This deletes every credential made by this key (websites and SSH keys stop working) and the PIN.\nType YES to continue: ")
	if !confirmed(stderr) {
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
		// Warnings (an object of someone else's left at the store's
		// anchor handle) are the user's to read.
		warn := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
		if err := tpmstore.RecoverStale(tpmstore.Config{TPM: tpm, Dir: sf.stateDir, Logger: warn}); err != nil {
			return fail(stderr, "reset", err)
		}
		fmt.Fprintln(stdout, "reset: the stale state was reset; every credential and the PIN are gone")
		return 0
	}
	if errors.Is(err, tpmstore.ErrCorruptState) || errors.Is(err, tpmstore.ErrForeignTPM) {
		// Only the TPM could tell that the state is unusable; the user
		// has agreed to lose every credential: remove it.
		return discard(sf, fmt.Sprintf("the state could not be used (%v)", errors.Unwrap(err)), stdout, stderr)
	}
	if err != nil {
		return fail(stderr, "reset", err)
	}
	defer closeAll()
	if err := s.Reset(); err != nil {
		return fail(stderr, "reset", sf.explain(err))
	}
	fmt.Fprintln(stdout, "reset: every credential and the PIN are gone")
	return exitOK
}

// resetUnusable removes state that cannot be opened, after asking.
func resetUnusable(sf *storeFlags, bad *tpmstore.StateError, stdout, stderr io.Writer) int {
	what := tpmstore.StatePath(sf.stateDir)
	if bad.Path == sf.stateDir {
		what = sf.stateDir
	}
	fmt.Fprintf(stderr, "The state cannot be used: %s %s.\nReset removes %s for good: every credential made by this key is lost (websites and SSH keys stop working), and so is the PIN.\nType YES to continue: ", bad.Path, bad.Problem, what)
	if !confirmed(stderr) {
		return 1
	}
	return discard(sf, "", stdout, stderr)
}

// discard removes unusable state, and the TPM objects it recorded when
// they can be named and proven to be its own.
func discard(sf *storeFlags, why string, stdout, stderr io.Writer) int {
	what := tpmstore.StatePath(sf.stateDir)
	if fi, err := os.Lstat(sf.stateDir); err == nil && !fi.IsDir() {
		what = sf.stateDir
	}
	var note string
	var err error
	if tpm, terr := openTPM(sf.tpm); terr == nil {
		note, err = tpmstore.DiscardStateTPM(tpmstore.Config{TPM: tpm, Dir: sf.stateDir})
		tpm.Close()
	} else {
		note = fmt.Sprintf("the TPM could not be opened (%v), so this state's TPM objects (if any) stay in it", terr)
		err = tpmstore.DiscardState(sf.stateDir)
	}
	if err != nil {
		if errors.Is(err, tpmstore.ErrStateInUse) {
			return fail(stderr, "reset", errDaemonRunning)
		}
		return fail(stderr, "reset", err)
	}
	if why != "" {
		fmt.Fprintf(stdout, "reset: %s\n", why)
	}
	fmt.Fprintf(stdout, "reset: removed %s; every credential and the PIN are gone (a new, empty key store is made at the next start)\n", what)
	if note != "" {
		fmt.Fprintf(stderr, "tpm-fido reset: note: %s\n", note)
	}
	return 0
}

// confirmed reads the answer to a YES question from stdin.
func confirmed(stderr io.Writer) bool {
	answer, err := bufio.NewReader(stdin).ReadString('\n')
	if err != nil && answer == "" {
		fmt.Fprintln(stderr, "\ntpm-fido reset: no answer: nothing was reset")
		return false
	}
	if strings.TrimSpace(answer) != "YES" {
		fmt.Fprintln(stderr, "not confirmed: nothing was reset")
		return false
	}
	return true
}

// isTerminal reports whether f is a terminal.
func isTerminal(f *os.File) bool {
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}
