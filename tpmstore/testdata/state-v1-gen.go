// This test wrote state-v1.db and state-v1.json with the version-1 store
// (commit 1711b1a, before resident indexes): GEN_V1_DIR=$PWD/tpmstore/testdata
// go test -run TestZZGenV1 ./tpmstore/ with this file in tpmstore/ as
// zz_gen_test.go. It is kept for the record; the go tool ignores testdata.

package tpmstore

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/google/go-tpm-tools/simulator"
	"github.com/google/go-tpm/tpm2/transport"
)

func TestZZGenV1(t *testing.T) {
	out := os.Getenv("GEN_V1_DIR")
	if out == "" {
		t.Skip()
	}
	sim, err := simulator.GetWithFixedSeedInsecure(15)
	if err != nil {
		t.Fatal(err)
	}
	tpm := transport.FromReadWriteCloser(sim)
	defer tpm.Close()
	dir := t.TempDir()
	clock := time.Unix(1750000000, 0)
	now := func() time.Time { clock = clock.Add(time.Second); return clock }
	s, err := Open(Config{TPM: tpm, Dir: dir, Now: now})
	if err != nil {
		t.Fatal(err)
	}
	rps := []struct{ id, name string }{{"example.org", "Example"}, {"ssh:", ""}, {"github.com", "GitHub"}, {"a.example", "A"}, {"z.example", "Zed"}}
	var replacedID, deletedID []byte
	for i := 0; i < 30; i++ {
		rp := rps[i%len(rps)]
		cp := uint8(1 + i%3)
		c, err := s.CreateCredential(sha256.Sum256([]byte(rp.id)), CredentialOptions{CredProtect: cp, Resident: true, HMACSecret: i%4 == 0})
		if err != nil {
			t.Fatal(err)
		}
		r := Resident{CredentialID: c.ID, RPID: rp.id, RPIDHash: c.RPIDHash, RPName: rp.name,
			User:      User{ID: []byte(fmt.Sprintf("user-%02d", i)), Name: fmt.Sprintf("u%02d", i), DisplayName: fmt.Sprintf("User %d", i)},
			PublicKey: c.PublicKey, CredProtect: cp}
		if i%7 == 3 {
			r.LargeBlobKey = make([]byte, 32)
			r.LargeBlobKey[0] = byte(i)
		}
		if i == 11 {
			replacedID = c.ID
		}
		if i == 17 {
			deletedID = c.ID
		}
		if err := s.PutResident(r); err != nil {
			t.Fatal(err)
		}
		if i == 20 {
			// Replace user-11 of rps[1] with a newer credential.
			c2, err := s.CreateCredential(sha256.Sum256([]byte(rps[1].id)), CredentialOptions{CredProtect: 2, Resident: true})
			if err != nil {
				t.Fatal(err)
			}
			r2 := Resident{CredentialID: c2.ID, RPID: rps[1].id, RPIDHash: c2.RPIDHash, RPName: "OpenSSH",
				User: User{ID: []byte("user-11"), Name: "u11-new"}, PublicKey: c2.PublicKey, CredProtect: 2}
			if err := s.PutResident(r2); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := s.DeleteResident(deletedID); err != nil {
		t.Fatal(err)
	}
	if err := s.UpdateResidentUser(func() []byte {
		l, _ := s.Residents(sha256.Sum256([]byte("github.com")))
		return l[len(l)-1].CredentialID
	}(), User{ID: []byte("user-02"), Name: "renamed", DisplayName: "Renamed User"}); err != nil {
		t.Fatal(err)
	}
	plain, err := s.CreateCredential(sha256.Sum256([]byte("example.org")), CredentialOptions{CredProtect: 1})
	if err != nil {
		t.Fatal(err)
	}
	pin := sha256.Sum256([]byte("1234"))
	if err := s.SetPIN([16]byte(pin[:16])); err != nil {
		t.Fatal(err)
	}
	var ctr uint32
	for range 300 {
		if ctr, err = s.NextCounter(); err != nil {
			t.Fatal(err)
		}
	}
	type cred struct {
		ID          string `json:"id"`
		UserID      string `json:"userId"`
		UserName    string `json:"userName"`
		DisplayName string `json:"displayName"`
		CredProtect uint8  `json:"credProtect"`
		LargeBlob   string `json:"largeBlobKey,omitempty"`
		Created     int64  `json:"created"`
		PublicKey   string `json:"publicKey"`
	}
	type rpOut struct {
		ID    string `json:"id"`
		Name  string `json:"name"`
		Hash  string `json:"hash"`
		Creds []cred `json:"credentials"` // newest first
	}
	m := struct {
		Seed        int64    `json:"simulatorSeed"`
		PIN         string   `json:"pin"`
		Counter     uint32   `json:"lastCounter"`
		Count       int      `json:"residents"`
		NonResident string   `json:"nonResidentId"`
		NonResRP    string   `json:"nonResidentRp"`
		Revoked     []string `json:"revokedIds"`
		RPs         []rpOut  `json:"rps"` // ResidentRPs order
	}{Seed: 15, PIN: "1234", Counter: ctr, NonResident: hex.EncodeToString(plain.ID), NonResRP: "example.org",
		Revoked: []string{hex.EncodeToString(replacedID), hex.EncodeToString(deletedID)}}
	m.Count, _ = s.ResidentCount()
	list, err := s.ResidentRPs()
	if err != nil {
		t.Fatal(err)
	}
	for _, rp := range list {
		ro := rpOut{ID: rp.ID, Name: rp.Name, Hash: hex.EncodeToString(rp.Hash[:])}
		rs, _ := s.Residents(rp.Hash)
		for _, r := range rs {
			pk, _ := r.PublicKey.Bytes()
			ro.Creds = append(ro.Creds, cred{hex.EncodeToString(r.CredentialID), string(r.User.ID), r.User.Name, r.User.DisplayName, r.CredProtect, hex.EncodeToString(r.LargeBlobKey), r.Created.UnixNano(), hex.EncodeToString(pk)})
		}
		m.RPs = append(m.RPs, ro)
	}
	s.Close()
	b, _ := json.MarshalIndent(m, "", "  ")
	if err := os.WriteFile(filepath.Join(out, "state-v1.json"), append(b, '\n'), 0o644); err != nil {
		t.Fatal(err)
	}
	db, _ := os.ReadFile(filepath.Join(dir, "state.db"))
	if err := os.WriteFile(filepath.Join(out, "state-v1.db"), db, 0o644); err != nil {
		t.Fatal(err)
	}
}
