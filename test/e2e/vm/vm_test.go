package vm

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"os"
	"strings"
	"testing"

	"github.com/fxamacker/cbor/v2"
)

func TestParse(t *testing.T) {
	log := "[    1.0] random kernel line\r\n" +
		"E2E-BOOT phase=1\r\n" +
		"E2E-RESULT token-list PASS 1s\r\n" +
		"[    2.5] ima: E2E-RESULT info-options FAIL fido2-token -I does not show credMgmt\r\n" +
		"E2E-LOG info-options: options: rk, up\n" +
		"E2E-LOG unknown: ignored\n" +
		"E2E-FILE blob aGVsbG8=\n" +
		"E2E-FILE bad !!!\n"
	r := Parse([]byte(log))
	if len(r.Order) != 2 || r.Order[0] != "token-list" || r.Order[1] != "info-options" {
		t.Fatalf("order = %v", r.Order)
	}
	if !r.Results["token-list"].Pass || r.Results["token-list"].Detail != "1s" {
		t.Errorf("token-list = %+v", r.Results["token-list"])
	}
	io := r.Results["info-options"]
	if io.Pass || io.Detail != "fido2-token -I does not show credMgmt" {
		t.Errorf("info-options = %+v", io)
	}
	if len(io.Log) != 1 || io.Log[0] != "info-options: options: rk, up" {
		t.Errorf("info-options log = %q", io.Log)
	}
	if string(r.Files["blob"]) != "hello" {
		t.Errorf("file blob = %q", r.Files["blob"])
	}
	if _, ok := r.Files["bad"]; ok {
		t.Error("undecodable file accepted")
	}
}

func TestUsrPath(t *testing.T) {
	for in, want := range map[string]string{
		"/lib/x86_64-linux-gnu/libc.so.6":     "usr/lib/x86_64-linux-gnu/libc.so.6",
		"/lib64/ld-linux-x86-64.so.2":         "usr/lib64/ld-linux-x86-64.so.2",
		"/usr/lib/x86_64-linux-gnu/libz.so.1": "usr/lib/x86_64-linux-gnu/libz.so.1",
		"/libexec/x":                          "libexec/x",
	} {
		if got := usrPath(in); got != want {
			t.Errorf("usrPath(%q) = %q, want %q", in, got, want)
		}
	}
}

func sshStr(b []byte) []byte {
	out := binary.BigEndian.AppendUint32(nil, uint32(len(b)))
	return append(out, b...)
}

// makeAttestation builds an ssh-sk-attest-v01 file the way ssh-keygen
// writes one for a packed self-attestation, with its .pub line.
func makeAttestation(t testing.TB, app string, challenge []byte) (att []byte, pub string, key *ecdsa.PrivateKey) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	point, err := key.PublicKey.Bytes()
	if err != nil {
		t.Fatal(err)
	}
	cose, err := cbor.Marshal(map[int]any{1: 2, 3: -7, -1: 1, -2: point[1:33], -3: point[33:]})
	if err != nil {
		t.Fatal(err)
	}
	h := sha256.Sum256([]byte(app))
	ad := append(h[:], 0x41, 0, 0, 0, 7)
	ad = append(ad, make([]byte, 16)...)
	ad = append(ad, 0, 3, 1, 2, 3)
	ad = append(ad, cose...)
	cdh := sha256.Sum256(challenge)
	digest := sha256.Sum256(append(append([]byte{}, ad...), cdh[:]...))
	sig, err := ecdsa.SignASN1(rand.Reader, key, digest[:])
	if err != nil {
		t.Fatal(err)
	}
	adCBOR, err := cbor.Marshal(ad)
	if err != nil {
		t.Fatal(err)
	}
	att = append(sshStr([]byte("ssh-sk-attest-v01")), sshStr(nil)...)
	att = append(att, sshStr(sig)...)
	att = append(att, sshStr(adCBOR)...)
	att = append(att, 0, 0, 0, 0)
	att = append(att, sshStr(nil)...)
	typ := "sk-ecdsa-sha2-nistp256@openssh.com"
	blob := append(sshStr([]byte(typ)), sshStr([]byte("nistp256"))...)
	blob = append(blob, sshStr(point)...)
	blob = append(blob, sshStr([]byte(app))...)
	return att, typ + " " + base64.StdEncoding.EncodeToString(blob) + " test\n", key
}

func TestVerifySSHAttestation(t *testing.T) {
	chal := []byte("0123456789abcdef0123456789abcdef")
	att, pub, _ := makeAttestation(t, "ssh:", chal)
	if err := VerifySSHAttestation(att, chal, pub); err != nil {
		t.Fatalf("valid attestation rejected: %v", err)
	}
	otherAtt, otherPub, _ := makeAttestation(t, "ssh:", chal)
	_, workPub, _ := makeAttestation(t, "ssh:work", chal)
	flipped := append([]byte{}, att...)
	flipped[len(flipped)-40] ^= 1 // inside the authenticator data
	bad := map[string]struct {
		att  []byte
		chal []byte
		pub  string
	}{
		"wrong challenge":  {att, []byte("other"), pub},
		"other key's pub":  {att, chal, otherPub},
		"other key's file": {otherAtt, chal, pub},
		"other app":        {att, chal, workPub},
		"altered authData": {flipped, chal, pub},
		"truncated":        {att[:30], chal, pub},
		"not a key":        {att, chal, "ssh-ed25519 AAAA"},
	}
	for name, c := range bad {
		if err := VerifySSHAttestation(c.att, c.chal, c.pub); !errors.Is(err, ErrBadAttestation) {
			t.Errorf("%s: err = %v, want ErrBadAttestation", name, err)
		}
	}
}

// TestHostProgramsInPackageList: every package the VM's host programs come
// from is in scripts/packages.txt, marked demo, so that `make demo` and
// `make test` install it (apt, dpkg and libc-bin are on every Debian).
func TestHostProgramsInPackageList(t *testing.T) {
	b, err := os.ReadFile("../../../scripts/packages.txt")
	if err != nil {
		t.Fatal(err)
	}
	demo := map[string]bool{"apt": true, "dpkg": true, "libc-bin": true}
	for _, line := range strings.Split(string(b), "\n") {
		line, _, _ = strings.Cut(line, "#")
		if f := strings.Fields(line); len(f) >= 2 && f[1] == "demo" {
			demo[f[0]] = true
		}
	}
	for _, p := range HostPrograms {
		if !demo[p.Package] {
			t.Errorf("%s comes from %s, which scripts/packages.txt does not list for demo", p.Name, p.Package)
		}
	}
}

// TestLoadOrder: every module comes after those it depends on; a missing
// dependency or a cycle is an error.
func TestLoadOrder(t *testing.T) {
	deps := map[string][]string{
		"9p": {"9pnet", "fscache", "netfs"}, "9pnet": nil, "fscache": {"netfs"}, "netfs": nil,
		"virtio_pci": {"virtio_ring", "virtio"}, "virtio": {"virtio_ring"}, "virtio_ring": nil,
	}
	order, err := loadOrder(deps)
	if err != nil {
		t.Fatal(err)
	}
	pos := map[string]int{}
	for i, m := range order {
		pos[m] = i
	}
	if len(order) != len(deps) {
		t.Fatalf("order %v has %d modules, want %d", order, len(order), len(deps))
	}
	for m, ds := range deps {
		for _, d := range ds {
			if pos[d] > pos[m] {
				t.Errorf("%s loads before its dependency %s: %v", m, d, order)
			}
		}
	}
	if _, err := loadOrder(map[string][]string{"a": {"b"}}); err == nil {
		t.Error("a missing dependency was accepted")
	}
	if _, err := loadOrder(map[string][]string{"a": {"b"}, "b": {"a"}}); err == nil {
		t.Error("a cycle was accepted")
	}
	if modName("hid-generic.ko") != "hid_generic" {
		t.Errorf("modName(hid-generic.ko) = %q", modName("hid-generic.ko"))
	}
}

func TestParseSkip(t *testing.T) {
	r := Parse([]byte("E2E-RESULT firefox-b SKIP firefox-esr is not installed\nE2E-LOG firefox-b: why\n"))
	res := r.Results["firefox-b"]
	if res == nil || res.Pass || !res.Skip || res.Detail != "firefox-esr is not installed" || len(res.Log) != 1 {
		t.Fatalf("parsed %+v", res)
	}
}
