package presence

import (
	"bufio"
	"context"
	"errors"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// openPTY returns the master side of a new pseudo-terminal and the path
// of its slave.
func openPTY(t *testing.T) (*os.File, string) {
	t.Helper()
	m, err := os.OpenFile("/dev/ptmx", os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Skipf("no pseudo-terminals: %v", err)
	}
	t.Cleanup(func() { m.Close() })
	fd := int(m.Fd())
	if err := unix.IoctlSetPointerInt(fd, unix.TIOCSPTLCK, 0); err != nil {
		t.Fatalf("unlockpt: %v", err)
	}
	n, err := unix.IoctlGetInt(fd, unix.TIOCGPTN)
	if err != nil {
		t.Fatalf("ptsname: %v", err)
	}
	return m, "/dev/pts/" + strconv.Itoa(n)
}

// answerWhenAsked reads the master until the question appears, then types
// answer (if not empty). It reports the text seen.
func answerWhenAsked(m *os.File, answer string) <-chan string {
	seen := make(chan string, 1)
	go func() {
		r := bufio.NewReader(m)
		var sb strings.Builder
		for {
			b, err := r.ReadByte()
			if err != nil {
				seen <- sb.String()
				return
			}
			sb.WriteByte(b)
			if strings.Contains(sb.String(), "[y/N]") {
				if answer != "" {
					_, _ = m.WriteString(answer + "\n")
				}
				seen <- sb.String()
				return
			}
		}
	}()
	return seen
}

func TestTerminalPTY(t *testing.T) {
	for _, c := range []struct {
		answer string
		want   error
	}{{"y", nil}, {"yes", nil}, {"n", ErrDenied}, {"maybe", ErrDenied}} {
		t.Run(c.answer, func(t *testing.T) {
			m, slave := openPTY(t)
			p, err := New(BackendTerminal, Options{TTYPath: slave, Timeout: 10 * time.Second})
			if err != nil {
				t.Fatal(err)
			}
			seen := answerWhenAsked(m, c.answer)
			err = p.Confirm(context.Background(), Request{Op: OpAuthenticate, RPID: "ssh:"})
			if !errors.Is(err, c.want) {
				t.Fatalf("answer %q: Confirm = %v, want %v", c.answer, err, c.want)
			}
			if s := <-seen; !strings.Contains(s, "Use SSH key (ssh:)") {
				t.Errorf("prompt text %q does not say what is asked", s)
			}
		})
	}
}

func TestTerminalCancelAndTimeout(t *testing.T) {
	m, slave := openPTY(t)
	f, err := os.OpenFile(slave, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	term := NewTerminal(f, 200*time.Millisecond)

	seen := answerWhenAsked(m, "")
	if err := term.Confirm(context.Background(), Request{Op: OpRegister, RPID: "x.example"}); !errors.Is(err, ErrTimeout) {
		t.Fatalf("no answer: Confirm = %v, want ErrTimeout", err)
	}
	<-seen

	term = NewTerminal(f, time.Minute)
	ctx, cancel := context.WithCancel(context.Background())
	seen = answerWhenAsked(m, "")
	go func() { <-seen; cancel() }()
	if err := term.Confirm(ctx, Request{Op: OpRegister, RPID: "x.example"}); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled: Confirm = %v, want context.Canceled", err)
	}
}
