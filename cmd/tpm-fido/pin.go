package main

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/tpm-fido/tpm-fido/ctap/ctap2/pinuv"
	"github.com/tpm-fido/tpm-fido/tpmstore"
)

func runPin(args []string, stdout, stderr io.Writer) int {
	top := newFlagSet("pin", "pin set|change|status [FLAGS]",
		"Set the first PIN, change it, or show whether one is set and how many\n"+
			"retries are left. PINs are read from the terminal without echo, or one\n"+
			"per line from standard input. Run 'tpm-fido pin set -h' for the flags.")
	about := map[string]string{
		"set":    "Set the first PIN (typed twice).",
		"change": "Change the PIN: the current one, then the new one twice.",
		"status": "Show whether a PIN is set, how many retries are left, and the TPM's\ndictionary-attack state with when the next PIN try is possible.",
	}
	switch {
	case len(args) == 0:
		return top.usageError(stderr, "needs a command: set, change or status")
	case args[0] == "-h" || args[0] == "-help" || args[0] == "--help":
		top.printUsage(stdout)
		return exitOK
	case about[args[0]] == "":
		return top.usageError(stderr, "unknown pin command %q (want set, change or status)", args[0])
	}
	sub, args := args[0], args[1:]
	fl := newFlagSet("pin "+sub, "pin "+sub+" [FLAGS]", about[sub])
	sf := addStoreFlags(fl.FlagSet)
	if code, ok := fl.parse(args, 0, 0, stdout, stderr); !ok {
		return code
	}
	in := newPINReader(stdin, stderr)
	switch sub {
	case "status":
		return pinStatus(sf, stdout, stderr)
	default: // set, change
		if _, err := sf.examine(); err != nil {
			return fail(stderr, "pin", err)
		}
		var current string
		var err error
		if sub == "change" {
			// Say before asking for the PIN when the TPM would not let
			// tpm-fido try it.
			if st, err := readDA(sf.tpm); err == nil && !st.SafeToTry() {
				return fail(stderr, "pin", fmt.Errorf("the PIN cannot be tried now: %s", nextTry(st)))
			}
			if current, err = in.read("Current PIN: "); err != nil {
				return fail(stderr, "pin", err)
			}
		}
		next, err := in.read("New PIN: ")
		if err != nil {
			return fail(stderr, "pin", err)
		}
		if err := pinuv.CheckPIN([]byte(next)); err != nil {
			return fail(stderr, "pin", err)
		}
		again, err := in.read("Repeat the new PIN: ")
		if err != nil {
			return fail(stderr, "pin", err)
		}
		if again != next {
			return fail(stderr, "pin", errors.New("the two PINs differ; nothing changed"))
		}
		s, closeAll, err := sf.open()
		if err != nil {
			return fail(stderr, "pin", err)
		}
		defer closeAll()
		if sub == "set" {
			err = s.SetPIN(pinuv.PINHash([]byte(next)))
		} else {
			err = s.ChangePIN(pinuv.PINHash([]byte(current)), pinuv.PINHash([]byte(next)))
		}
		switch {
		case err == nil && sub == "set":
			fmt.Fprintln(stdout, "The PIN is set.")
			adviseLockout(s, stdout)
			return exitOK
		case err == nil:
			fmt.Fprintln(stdout, "The PIN is changed.")
			adviseLockout(s, stdout)
			return exitOK
		case errors.Is(err, tpmstore.ErrPINAlreadySet):
			return fail(stderr, "pin", errors.New("a PIN is already set; use `tpm-fido pin change`"))
		case errors.Is(err, tpmstore.ErrPINNotSet):
			return fail(stderr, "pin", errors.New("no PIN is set; use `tpm-fido pin set`"))
		case errors.Is(err, tpmstore.ErrPINInvalid):
			return fail(stderr, "pin", fmt.Errorf("wrong PIN (%d retries left)", s.PINRetries()))
		case errors.Is(err, tpmstore.ErrPINAuthBlocked):
			return fail(stderr, "pin", errors.New("three wrong PINs in a row: restart the daemon (or run this command again) before the next try"))
		case errors.Is(err, tpmstore.ErrPINBlocked):
			return fail(stderr, "pin", errors.New("the PIN is blocked: only `tpm-fido reset` helps (it deletes every credential)"))
		case errors.Is(err, tpmstore.ErrTPMLockout):
			var w *tpmstore.DAWaitError
			if errors.As(err, &w) {
				return fail(stderr, "pin", fmt.Errorf("PIN not tried, no retry spent: %s", nextTry(w.DA)))
			}
		}
		return fail(stderr, "pin", sf.explain(err))
	}
}

// pinStatus prints whether a PIN is set, its retries, and the TPM's
// dictionary-attack state with when the next PIN try is possible. Like
// the other store commands it does not touch the TPM while the daemon
// holds the state (doctor does, with a timeout).
func pinStatus(sf *storeFlags, stdout, stderr io.Writer) int {
	exists, err := sf.examine()
	if err == nil && exists {
		err = printPINState(sf, stdout)
	}
	switch {
	case errors.Is(err, errDaemonRunning):
		return fail(stderr, "pin", fmt.Errorf("%w\n(`tpm-fido doctor` shows the TPM's dictionary-attack state while the daemon runs)", err))
	case err != nil:
		return fail(stderr, "pin", err)
	case !exists:
		fmt.Fprintln(stdout, "PIN: not set")
	}
	st, err := readDA(sf.tpm)
	if err != nil {
		return fail(stderr, "pin", err)
	}
	fmt.Fprintf(stdout, "TPM dictionary-attack state: %s\n", st)
	fmt.Fprintf(stdout, "next PIN try: %s\n", nextTry(st))
	if !st.AllowsCTAPRetries() {
		fmt.Fprintf(stdout, "note: this TPM locks out after %d failures, fewer than the %d PIN tries CTAP allows; see `tpm-fido doctor`\n", st.MaxTries, tpmstore.CTAPPINFailures)
	}
	return exitOK
}

// printPINState prints whether the PIN of the state pinStatus examined
// is set, and its retries. The store is closed before pinStatus opens
// the TPM again (a swtpm serves one connection at a time).
func printPINState(sf *storeFlags, stdout io.Writer) error {
	s, closeAll, err := sf.openExamined()
	if err != nil {
		return err
	}
	defer closeAll()
	if s.PINIsSet() {
		fmt.Fprintf(stdout, "PIN: set, %d retries left\n", s.PINRetries())
	} else {
		fmt.Fprintln(stdout, "PIN: not set")
	}
	return nil
}

// adviseLockout prints doctor's advice in one line when the TPM's
// lockout password is empty: the TPM then limits nobody's guesses of the
// PIN just set (docs/threat-model.md).
func adviseLockout(s *tpmstore.Store, stdout io.Writer) {
	if st, _, err := s.DAStatus(); err == nil && st.GuessingUnlimited() {
		fmt.Fprintln(stdout, lockoutAdvice)
	}
}

// readDA reads the TPM's dictionary-attack state with its own TPM
// connection.
func readDA(spec string) (tpmstore.DAStatus, error) {
	tpm, err := openTPM(spec)
	if err != nil {
		return tpmstore.DAStatus{}, err
	}
	defer tpm.Close()
	return tpmstore.ReadDAStatus(tpm)
}

// nextTry says when a PIN can be tried, given the TPM's DA state.
func nextTry(st tpmstore.DAStatus) string {
	w := st.Wait()
	switch {
	case w < 0:
		return fmt.Sprintf("never under this TPM policy: it locks out after %d failure(s), so a single wrong PIN would lock every TPM key on this machine (see `tpm-fido doctor`)", st.MaxTries)
	case w == 0 && st.SafeTries() < 0:
		return "now (the TPM does not count failures)"
	case w == 0:
		return fmt.Sprintf("now (%d wrong PIN(s) before tpm-fido stops trying, to keep the TPM out of lockout)", st.SafeTries())
	}
	return fmt.Sprintf("in at most %s (tpm-fido does not try a PIN while one more failure would put the TPM into dictionary-attack lockout; it forgives one failure every %s)", w, st.RecoveryTime)
}

// pinReader reads PINs: from a terminal without echo, else one per line.
type pinReader struct {
	tty    *os.File
	lines  *bufio.Reader
	prompt io.Writer
}

func newPINReader(r io.Reader, prompt io.Writer) *pinReader {
	if f, ok := r.(*os.File); ok && isTerminal(f) {
		return &pinReader{tty: f, prompt: prompt}
	}
	return &pinReader{lines: bufio.NewReader(r), prompt: prompt}
}

func (p *pinReader) read(prompt string) (string, error) {
	if p.tty == nil {
		line, err := p.lines.ReadString('\n')
		if err != nil && line == "" {
			return "", errors.New("no PIN on standard input")
		}
		return strings.TrimRight(line, "\r\n"), nil
	}
	fmt.Fprint(p.prompt, prompt)
	defer fmt.Fprintln(p.prompt)
	fd := int(p.tty.Fd())
	old, err := unix.IoctlGetTermios(fd, unix.TCGETS)
	if err != nil {
		return "", err
	}
	quiet := *old
	quiet.Lflag &^= unix.ECHO
	quiet.Lflag |= unix.ICANON | unix.ISIG
	if err := unix.IoctlSetTermios(fd, unix.TCSETS, &quiet); err != nil {
		return "", err
	}
	defer unix.IoctlSetTermios(fd, unix.TCSETS, old)
	line, err := bufio.NewReader(p.tty).ReadString('\n')
	if err != nil && line == "" {
		return "", errors.New("no PIN entered")
	}
	return strings.TrimRight(line, "\r\n"), nil
}
