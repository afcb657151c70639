//go:build cgo

package main

import (
	"crypto/sha256"
	"encoding/base64"
	"strings"
	"testing"
	"time"

	"github.com/google/go-tpm/tpm2/transport"
	"golang.org/x/crypto/ssh"

	"github.com/tpm-fido/tpm-fido/tpmstore"
	"github.com/tpm-fido/tpm-fido/tpmstore/tpmsim"
)

// keepOpen lets every command of one test share one simulator (a new
// simulator is a new machine, whose TPM would not know the state).
type keepOpen struct{ transport.TPM }

func (keepOpen) Close() error { return nil }

func withSimulator(t *testing.T) (dir string, tpm transport.TPM) {
	t.Helper()
	sim, err := tpmsim.Open()
	if err != nil {
		t.Skipf("TPM simulator: %v", err)
	}
	t.Cleanup(func() { sim.Close() })
	old := openTPM
	openTPM = func(string) (transport.TPMCloser, error) { return keepOpen{sim}, nil }
	t.Cleanup(func() { openTPM = old })
	return t.TempDir(), sim
}

func withStdin(t *testing.T, s string) {
	t.Helper()
	old := stdin
	stdin = strings.NewReader(s)
	t.Cleanup(func() { stdin = old })
}

func addResident(t *testing.T, s *tpmstore.Store, rpID, user string) tpmstore.Resident {
	t.Helper()
	h := sha256.Sum256([]byte(rpID))
	c, err := s.CreateCredential(h, tpmstore.CredentialOptions{CredProtect: 2, Resident: true})
	if err != nil {
		t.Fatal(err)
	}
	r := tpmstore.Resident{
		CredentialID: c.ID, RPID: rpID, RPIDHash: h, RPName: rpID,
		User:      tpmstore.User{ID: []byte(user), Name: user, DisplayName: user},
		PublicKey: c.PublicKey, CredProtect: 2, Created: time.Unix(1700000000, 0),
	}
	if err := s.PutResident(r); err != nil {
		t.Fatal(err)
	}
	return r
}

func TestStoreCommands(t *testing.T) {
	dir, tpm := withSimulator(t)
	sd := "--state-dir=" + dir

	out, e, rc := runCmd(t, "list", sd)
	if rc != 0 || !strings.Contains(out, "no resident credentials") {
		t.Fatalf("list on empty state: rc %d %q %q", rc, out, e)
	}

	s, err := tpmstore.Open(tpmstore.Config{TPM: tpm, Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	sshCred := addResident(t, s, "ssh:", "openssh")
	webCred := addResident(t, s, "github.com", "alice")
	s.Close()

	out, e, rc = runCmd(t, "list", sd)
	if rc != 0 {
		t.Fatalf("list: %d %s", rc, e)
	}
	for _, want := range []string{"ssh: (1 resident credential)", "github.com (1 resident credential)", "alice", "openssh",
		base64.RawURLEncoding.EncodeToString(webCred.CredentialID)} {
		if !strings.Contains(out, want) {
			t.Errorf("list output lacks %q:\n%s", want, out)
		}
	}

	out, _, rc = runCmd(t, "list", "--authorized-keys", sd)
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if rc != 0 || len(lines) != 1 {
		t.Fatalf("list --authorized-keys: rc %d, %d lines:\n%s", rc, len(lines), out)
	}
	pk, _, _, _, err := ssh.ParseAuthorizedKey([]byte(lines[0]))
	if err != nil {
		t.Fatalf("authorized_keys line does not parse: %v\n%s", err, lines[0])
	}
	if pk.Type() != ssh.KeyAlgoSKECDSA256 {
		t.Fatalf("key type %s", pk.Type())
	}
	want, err := authorizedKey(sshCred.PublicKey, "ssh:", "")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(lines[0], want) {
		t.Errorf("ssh key line %q is not the credential's key %q", lines[0], want)
	}

	// delete
	id := base64.RawURLEncoding.EncodeToString(webCred.CredentialID)
	if _, e, rc := runCmd(t, "delete", "--yes", sd, id); rc != 0 {
		t.Fatalf("delete: %s", e)
	}
	out, _, _ = runCmd(t, "list", sd)
	if strings.Contains(out, "github.com") {
		t.Errorf("deleted credential still listed:\n%s", out)
	}
	if _, e, rc := runCmd(t, "delete", "--yes", sd, id); rc == 0 || !strings.Contains(e, "no resident credential") {
		t.Errorf("deleting twice: rc %d %q", rc, e)
	}
	if _, _, rc := runCmd(t, "delete", sd, "!!!"); rc == 0 {
		t.Errorf("a malformed ID was accepted")
	}

	// pin
	if out, _, _ := runCmd(t, "pin", "status", sd); !strings.Contains(out, "not set") {
		t.Errorf("pin status before set: %q", out)
	}
	withStdin(t, "1234\n1235\n")
	if _, e, rc := runCmd(t, "pin", "set", sd); rc == 0 || !strings.Contains(e, "differ") {
		t.Errorf("mismatched PINs: rc %d %q", rc, e)
	}
	withStdin(t, "12\n12\n")
	if _, e, rc := runCmd(t, "pin", "set", sd); rc == 0 || !strings.Contains(e, "at least 4") {
		t.Errorf("short PIN: rc %d %q", rc, e)
	}
	withStdin(t, "1234\n1234\n")
	if _, e, rc := runCmd(t, "pin", "set", sd); rc != 0 {
		t.Fatalf("pin set: %s", e)
	}
	if out, _, _ := runCmd(t, "pin", "status", sd); !strings.Contains(out, "set, 8 retries") {
		t.Errorf("pin status after set: %q", out)
	}
	withStdin(t, "9999\n5678\n5678\n")
	if _, e, rc := runCmd(t, "pin", "change", sd); rc == 0 || !strings.Contains(e, "wrong PIN (7 retries left)") {
		t.Errorf("change with a wrong PIN: rc %d %q", rc, e)
	}
	withStdin(t, "1234\n5678\n5678\n")
	if _, e, rc := runCmd(t, "pin", "change", sd); rc != 0 {
		t.Fatalf("pin change: %s", e)
	}
	withStdin(t, "5678\n5678\n")
	if _, e, rc := runCmd(t, "pin", "set", sd); rc == 0 || !strings.Contains(e, "already set") {
		t.Errorf("set over a PIN: rc %d %q", rc, e)
	}

	// reset
	withStdin(t, "yes\n")
	if _, _, rc := runCmd(t, "reset", sd); rc == 0 {
		t.Errorf("reset went ahead without YES")
	}
	if out, _, _ := runCmd(t, "list", sd); !strings.Contains(out, "ssh:") {
		t.Fatalf("unconfirmed reset deleted credentials:\n%s", out)
	}
	withStdin(t, "YES\n")
	if _, e, rc := runCmd(t, "reset", sd); rc != 0 {
		t.Fatalf("reset: %s", e)
	}
	if out, _, _ := runCmd(t, "list", sd); !strings.Contains(out, "no resident credentials") {
		t.Errorf("after reset:\n%s", out)
	}
	if out, _, _ := runCmd(t, "pin", "status", sd); !strings.Contains(out, "not set") {
		t.Errorf("PIN survived reset: %q", out)
	}
}

// TestResidentUsage: list and doctor report how many resident
// credentials are used of the capacity the daemon last ran with.
func TestResidentUsage(t *testing.T) {
	dir, tpm := withSimulator(t)
	sd := "--state-dir=" + dir
	env := doctorEnv{stateDir: dir}
	if c := env.checkResidents(); c.status != checkOK || !strings.Contains(c.detail, "none yet") {
		t.Errorf("doctor without state: %+v", c)
	}
	// As `tpm-fido serve --max-residents 3` would open it.
	s, err := tpmstore.Open(tpmstore.Config{TPM: tpm, Dir: dir, MaxResidents: 3})
	if err != nil {
		t.Fatal(err)
	}
	addResident(t, s, "ssh:", "a")
	addResident(t, s, "example.org", "b")
	if c := env.checkResidents(); c.status != checkOK || !strings.Contains(c.detail, "running daemon holds the state") {
		t.Errorf("doctor while the state is held: %+v", c)
	}
	s.Close()

	out, e, rc := runCmd(t, "list", sd)
	if rc != 0 || !strings.Contains(out, "2 of 3 resident credentials used, 2 relying parties") {
		t.Errorf("list: rc %d %q %q", rc, out, e)
	}
	if c := env.checkResidents(); c.status != checkOK || c.detail != "2 of 3 resident credentials used, 2 relying parties" {
		t.Errorf("doctor: %+v", c)
	}
	if s, err = tpmstore.Open(tpmstore.Config{TPM: tpm, Dir: dir}); err != nil {
		t.Fatal(err)
	}
	addResident(t, s, "ssh:", "c")
	s.Close()
	if c := env.checkResidents(); c.status != checkWarn || !strings.Contains(c.detail, "3 of 3") || !strings.Contains(c.fix, "--max-residents") {
		t.Errorf("doctor when full: %+v", c)
	}
	if out, _, _ := runCmd(t, "list", sd); !strings.Contains(out, "3 of 3 resident credentials used, 2 relying parties") {
		t.Errorf("list when full:\n%s", out)
	}
}
