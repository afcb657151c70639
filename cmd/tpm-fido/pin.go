package main

import (
	"bufio"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"unicode/utf8"

	"golang.org/x/sys/unix"

	"github.com/tpm-fido/tpm-fido/tpmstore"
)

// PIN policy (CTAP 2.1 §6.5.1): at least 4 Unicode code points, at most
// 63 bytes of UTF-8.
const (
	pinMinCodePoints = 4
	pinMaxBytes      = 63
)

func runPin(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || strings.HasPrefix(args[0], "-") {
		fmt.Fprintln(stderr, "usage: tpm-fido pin set|change|status [--tpm T] [--state-dir D]")
		return 2
	}
	sub, args := args[0], args[1:]
	fl := newFlagSet("pin "+sub, "pin "+sub+" [--tpm T] [--state-dir D]", stderr)
	sf := addStoreFlags(fl)
	if err := fl.Parse(args); err != nil {
		return 2
	}
	if fl.NArg() != 0 {
		fl.Usage()
		return 2
	}
	in := newPINReader(stdin, stderr)
	switch sub {
	case "status":
		if !sf.stateExists() {
			fmt.Fprintln(stdout, "PIN: not set")
			return 0
		}
		s, closeAll, err := sf.open()
		if err != nil {
			return fail(stderr, "pin", err)
		}
		defer closeAll()
		if !s.PINIsSet() {
			fmt.Fprintln(stdout, "PIN: not set")
			return 0
		}
		fmt.Fprintf(stdout, "PIN: set, %d retries left\n", s.PINRetries())
		return 0
	case "set", "change":
		if err := sf.checkUnlocked(); err != nil {
			return fail(stderr, "pin", err)
		}
		var current string
		var err error
		if sub == "change" {
			if current, err = in.read("Current PIN: "); err != nil {
				return fail(stderr, "pin", err)
			}
		}
		next, err := in.read("New PIN: ")
		if err != nil {
			return fail(stderr, "pin", err)
		}
		if err := checkPINPolicy(next); err != nil {
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
			err = s.SetPIN(pinHash(next))
		} else {
			err = s.ChangePIN(pinHash(current), pinHash(next))
		}
		switch {
		case err == nil:
			fmt.Fprintln(stdout, "PIN "+sub+" done")
			return 0
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
		}
		return fail(stderr, "pin", err)
	}
	fmt.Fprintf(stderr, "tpm-fido pin: unknown subcommand %q (want set, change or status)\n", sub)
	return 2
}

// pinHash is LEFT(SHA-256(pin), 16), what the store keeps the PIN as.
func pinHash(pin string) [16]byte {
	sum := sha256.Sum256([]byte(pin))
	var h [16]byte
	copy(h[:], sum[:])
	return h
}

func checkPINPolicy(pin string) error {
	switch {
	case !utf8.ValidString(pin):
		return errors.New("the PIN is not valid UTF-8")
	case utf8.RuneCountInString(pin) < pinMinCodePoints:
		return fmt.Errorf("the PIN needs at least %d characters", pinMinCodePoints)
	case len(pin) > pinMaxBytes:
		return fmt.Errorf("the PIN may have at most %d bytes", pinMaxBytes)
	}
	return nil
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
