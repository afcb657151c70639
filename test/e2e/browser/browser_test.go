package browser

import (
	"bufio"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestHostProgramsInPackageList: every package the browser guest takes
// from the host is in scripts/packages.txt, so that `make test` and CI
// install it (util-linux and passwd are on every Debian).
func TestHostProgramsInPackageList(t *testing.T) {
	b, err := os.ReadFile("../../../scripts/packages.txt")
	if err != nil {
		t.Fatal(err)
	}
	listed := map[string]bool{"util-linux": true, "passwd": true}
	for _, line := range strings.Split(string(b), "\n") {
		line, _, _ = strings.Cut(line, "#")
		if f := strings.Fields(line); len(f) >= 1 {
			listed[f[0]] = true
		}
	}
	for _, p := range HostPrograms {
		if !listed[p.Package] {
			t.Errorf("%s comes from %s, which scripts/packages.txt does not list", p.Name, p.Package)
		}
	}
	for b, progs := range Programs {
		for _, p := range progs {
			found := false
			for _, h := range HostPrograms {
				found = found || h.Name == p
			}
			if !found {
				t.Errorf("browser %s needs %s, which HostPrograms does not name", b, p)
			}
		}
	}
}

// TestMarionette talks to a fake Marionette server: the greeting, a
// command and its result, an error with a prompt's text, and a stale
// response to an earlier command that must be skipped.
func TestMarionette(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		send := func(s string) { fmt.Fprintf(c, "%d:%s", len(s), s) }
		send(`{"applicationType":"gecko","marionetteProtocol":3}`)
		r := bufio.NewReader(c)
		for {
			head, err := r.ReadString(':')
			if err != nil {
				return
			}
			n, _ := strconv.Atoi(strings.TrimSuffix(head, ":"))
			b := make([]byte, n)
			if _, err := io.ReadFull(r, b); err != nil {
				return
			}
			var cmd []json.RawMessage
			_ = json.Unmarshal(b, &cmd)
			var id int
			var name string
			_ = json.Unmarshal(cmd[1], &id)
			_ = json.Unmarshal(cmd[2], &name)
			switch name {
			case "WebDriver:ExecuteScript":
				send(fmt.Sprintf(`[1,%d,null,{"value":"stale"}]`, id-1))
				send(fmt.Sprintf(`[1,%d,null,{"value":["a","b"]}]`, id))
			default:
				send(fmt.Sprintf(`[1,%d,{"error":"unexpected alert open","message":"x","data":{"text":"Please enter the PIN for your device."}},null]`, id))
			}
		}
	}()
	m, err := DialMarionette(ln.Addr().String(), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	var ids []string
	if err := m.Script(5*time.Second, "return 1", &ids); err != nil || len(ids) != 2 || ids[1] != "b" {
		t.Fatalf("Script = %v, %v", ids, err)
	}
	err = m.Call(5*time.Second, "WebDriver:GetTitle", nil, nil)
	text, open := isPromptOpen(err)
	if !open || !strings.Contains(text, "PIN") {
		t.Fatalf("Call = %v; prompt %q %v", err, text, open)
	}
}

// TestDecodeXWD decodes a 2x1 image in Xvfb's layout and rejects a
// truncated one.
func TestDecodeXWD(t *testing.T) {
	hdr := make([]byte, 100)
	put := func(i int, v uint32) { binary.BigEndian.PutUint32(hdr[i*4:], v) }
	put(0, 100) // header size
	put(4, 2)   // width
	put(5, 1)   // height
	put(7, 0)   // LSBFirst
	put(11, 32) // bits per pixel
	put(12, 8)  // bytes per line
	img := append(hdr, 0x10, 0x20, 0x30, 0, 0xff, 0xfe, 0xfd, 0)
	got, err := decodeXWD(img)
	if err != nil {
		t.Fatal(err)
	}
	if r, g, b, _ := got.At(0, 0).RGBA(); r>>8 != 0x30 || g>>8 != 0x20 || b>>8 != 0x10 {
		t.Errorf("pixel 0 = %x %x %x", r>>8, g>>8, b>>8)
	}
	if r, _, _, _ := got.At(1, 0).RGBA(); r>>8 != 0xfd {
		t.Errorf("pixel 1 red = %x", r>>8)
	}
	if _, err := decodeXWD(img[:len(img)-1]); err == nil {
		t.Error("a truncated image decoded")
	}
}
