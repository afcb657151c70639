package main

import (
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/rogpeppe/go-internal/testscript"

	"github.com/tpm-fido/tpm-fido/test/load/inproc"
	"github.com/tpm-fido/tpm-fido/tpmstore"
)

// TestScripts runs the command-line scenarios in testdata/script: the
// real tpm-fido command (this test binary, through testscript.Main), and
// for the store commands a real swtpm.
//
// Besides testscript's own commands the scripts have:
//
//	exits N PROG [ARGS...]       PROG must exit with status N
//	swtpm                        starts a swtpm for this script (guard it with
//	                             [!exec:swtpm] skip); sets $TPM (the --tpm value)
//	resident NAME RPID USER      adds a resident credential to the state in $WORK/state
//	                             on $TPM; sets $NAME to its ID as list prints it
//	                             and $NAME_PREFIX to that ID's first 8 characters
func TestScripts(t *testing.T) {
	testscript.Run(t, testscript.Params{
		Dir: "testdata/script",
		Cmds: map[string]func(ts *testscript.TestScript, neg bool, args []string){
			"exits":    cmdExits,
			"swtpm":    cmdSwtpm,
			"resident": cmdResident,
		},
		RequireExplicitExec: true,
	})
}

func cmdExits(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) < 2 {
		ts.Fatalf("usage: exits N PROG [ARGS...]")
	}
	want, err := strconv.Atoi(args[0])
	if err != nil {
		ts.Fatalf("exits: %v", err)
	}
	err = ts.Exec(args[1], args[2:]...)
	got := 0
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee):
		got = ee.ExitCode()
	case err != nil:
		ts.Fatalf("exits: %v", err)
	}
	if got != want {
		ts.Fatalf("%s exited with status %d, want %d", args[1], got, want)
	}
}

func cmdSwtpm(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 0 {
		ts.Fatalf("usage: swtpm")
	}
	dir := ts.MkAbs("swtpm")
	ts.Check(os.MkdirAll(dir, 0o700))
	sw, err := inproc.StartSwtpm(dir) // scripts check [exec:swtpm] first
	ts.Check(err)
	ts.Defer(sw.Stop)
	ts.Setenv("TPM", sw.Spec())
}

func cmdResident(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 3 {
		ts.Fatalf("usage: resident NAME RPID USER")
	}
	name, rpID, user := args[0], args[1], args[2]
	tpm, err := tpmstore.OpenTPM(ts.Getenv("TPM"))
	ts.Check(err)
	defer tpm.Close()
	s, err := tpmstore.Open(tpmstore.Config{TPM: tpm, Dir: filepath.Join(ts.Getenv("WORK"), "state")})
	ts.Check(err)
	defer s.Close()
	h := sha256.Sum256([]byte(rpID))
	c, err := s.CreateCredential(h, tpmstore.CredentialOptions{CredProtect: 2, Resident: true})
	ts.Check(err)
	ts.Check(s.PutResident(tpmstore.Resident{
		CredentialID: c.ID, RPID: rpID, RPIDHash: h, RPName: rpID,
		User:      tpmstore.User{ID: []byte(user), Name: user, DisplayName: user},
		PublicKey: c.PublicKey, CredProtect: 2, Created: time.Unix(1700000000, 0),
	}))
	id := base64.RawURLEncoding.EncodeToString(c.ID)
	ts.Setenv(name, id)
	ts.Setenv(name+"_PREFIX", id[:8])
	fmt.Fprintf(ts.Stdout(), "%s %s\n", name, id)
}
