package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/tpm-fido/tpm-fido/ctap/ctaphid/ctaphidtest"
	"github.com/tpm-fido/tpm-fido/presence"
	"github.com/tpm-fido/tpm-fido/test/load/inproc"
	"github.com/tpm-fido/tpm-fido/tpmstore/tpmtest"
	hidtransport "github.com/tpm-fido/tpm-fido/transport"
)

// opResult is one operation measured n times.
type opResult struct {
	Name string
	Durs []time.Duration
	Cmds map[tpm2.TPMCC]int // summed over all iterations
}

type backendResult struct {
	Name     string
	Ops      []opResult
	BareSign opResult
	Daemon   *daemonResult // nil when skipped
}

// startTPM starts the TPM named by backend and returns its --tpm spec.
func startTPM(backend, dir string) (spec string, stop func(), err error) {
	switch backend {
	case "simulator":
		return "simulator", func() {}, nil
	case "swtpm":
		sd := filepath.Join(dir, "swtpm")
		if err := os.Mkdir(sd, 0o700); err != nil {
			return "", nil, err
		}
		s, err := inproc.StartSwtpm(sd)
		if err != nil {
			return "", nil, err
		}
		return s.Spec(), s.Stop, nil
	}
	return "", nil, fmt.Errorf("unknown TPM backend %q", backend)
}

func measureBackend(ctx context.Context, backend string, o options, daemon string, log *slog.Logger) (*backendResult, error) {
	dir, err := os.MkdirTemp("", "tpm-fido-bench-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	spec, stopTPM, err := startTPM(backend, dir)
	if err != nil {
		return nil, err
	}
	defer stopTPM()

	res := &backendResult{Name: backend}
	if err := measureInProcess(ctx, res, spec, dir, o, log); err != nil {
		return nil, err
	}
	if daemon != "" {
		d, err := measureDaemon(ctx, daemon, spec, dir, o, log)
		if err != nil {
			return nil, fmt.Errorf("daemon: %w", err)
		}
		res.Daemon = d
	}
	return res, nil
}

// measureInProcess runs the stack in this process on the unix: transport
// and measures each operation as a client over the socket.
func measureInProcess(ctx context.Context, res *backendResult, spec, dir string, o options, log *slog.Logger) error {
	tpm, err := inproc.OpenTPM(spec)
	if err != nil {
		return err
	}
	defer tpm.Close()
	res.BareSign, err = bareSign(tpm, o.N)
	if err != nil {
		return fmt.Errorf("bare TPM2_Sign: %w", err)
	}
	log.Info("bare sign measured", "backend", res.Name)

	st, err := inproc.New(inproc.Config{TPM: tpm, Dir: filepath.Join(dir, "state-inproc"), Presence: presence.Fixed{Allow: true}, Logger: log})
	if err != nil {
		return err
	}
	defer st.Close()
	ch, stop, err := serveUnix(ctx, st, filepath.Join(dir, "run", "hid.sock"), 30*time.Second, log)
	if err != nil {
		return err
	}
	defer stop()
	m := &meter{ct: st.Counting, n: o.N}
	cdh := sha256.Sum256([]byte("bench"))
	const rp = "bench.example"

	user := 0
	newCred := func(hmacSecret bool) ([]byte, error) {
		user++
		ad, err := ch.MakeCredential(ctaphidtest.MakeCredentialParams(rp, fmt.Appendf(nil, "user-%d", user), cdh[:], false, hmacSecret, nil))
		if err != nil {
			return nil, err
		}
		return ad.CredID, nil
	}
	if err := m.run(res, "makeCredential", func(int) error { _, err := newCred(false); return err }); err != nil {
		return err
	}

	warm, err := newCred(false)
	if err != nil {
		return err
	}
	assert := func(params map[int]any) error { _, err := ch.GetAssertion(params); return err }
	if err := m.run(res, "getAssertion warm", func(int) error {
		return assert(ctaphidtest.GetAssertionParams(rp, cdh[:], true, warm))
	}); err != nil {
		return err
	}

	var cold [3][]byte
	for i := range cold {
		if cold[i], err = newCred(false); err != nil {
			return err
		}
	}
	if err := m.run(res, "getAssertion cold", func(i int) error {
		return assert(ctaphidtest.GetAssertionParams(rp, cdh[:], true, cold[i%len(cold)]))
	}); err != nil {
		return err
	}

	// getInfo's maxCredentialCountInList is 64, so the list is 63
	// foreign IDs and ours. Foreign IDs are 64 random bytes (the size
	// many hardware keys use); 64 of our own 226-byte IDs would not fit
	// the 7609-byte CTAPHID message limit.
	foreign := make([][]byte, 0, 64)
	for range 63 {
		id := make([]byte, 64)
		_, _ = rand.Read(id)
		id[0] = warm[0] // same version byte: only the AEAD tells them apart
		foreign = append(foreign, id)
	}
	foreign = append(foreign, warm)
	if err := m.run(res, "getAssertion allowList 63 foreign + ours", func(int) error {
		return assert(ctaphidtest.GetAssertionParams(rp, cdh[:], true, foreign...))
	}); err != nil {
		return err
	}

	hs, err := newCred(true)
	if err != nil {
		return err
	}
	sess, err := ch.KeyAgreement()
	if err != nil {
		return err
	}
	salt := bytes.Repeat([]byte{0x5a}, 32)
	if err := m.run(res, "getAssertion hmac-secret", func(int) error {
		p := ctaphidtest.GetAssertionParams(rp, cdh[:], true, hs)
		p[4] = ctaphidtest.HMACSecretExt(sess, salt)
		return assert(p)
	}); err != nil {
		return err
	}

	const pin = "bench-pin-1"
	if err := ch.SetPIN(pin); err != nil {
		return err
	}
	if sess, err = ch.KeyAgreement(); err != nil {
		return err
	}
	return m.run(res, "clientPIN getPinUvAuthTokenUsingPinWithPermissions", func(int) error {
		_, err := ch.TokenWith(sess, pin, 0x03, rp)
		return err
	})
}

// meter times operations and sums their TPM commands.
type meter struct {
	ct *tpmtest.CountingTPM
	n  int
}

// run measures f n times after one warm-up call.
func (m *meter) run(res *backendResult, name string, f func(i int) error) error {
	r, err := timeOp(name, m.n, m.ct, f)
	if err != nil {
		return err
	}
	res.Ops = append(res.Ops, r)
	return nil
}

func timeOp(name string, n int, ct *tpmtest.CountingTPM, f func(i int) error) (opResult, error) {
	r := opResult{Name: name, Cmds: map[tpm2.TPMCC]int{}}
	if err := f(-1 + n); err != nil { // warm-up, not counted
		return r, fmt.Errorf("%s (warm-up): %w", name, err)
	}
	for i := range n {
		ct.Reset()
		t0 := time.Now()
		if err := f(i); err != nil {
			return r, fmt.Errorf("%s #%d: %w", name, i, err)
		}
		r.Durs = append(r.Durs, time.Since(t0))
		for cc, k := range ct.Snapshot() {
			r.Cmds[cc] += k
		}
	}
	return r, nil
}

// bareSign measures TPM2_Sign alone with a loaded P-256 key on the same
// TPM connection: the floor every assertion stands on. The key is a
// primary key, created once and flushed at the end.
func bareSign(tpm transport.TPM, n int) (opResult, error) {
	ct := tpmtest.NewCountingTPM(tpm)
	rsp, err := tpm2.CreatePrimary{
		PrimaryHandle: tpm2.TPMRHOwner,
		InPublic: tpm2.New2B(tpm2.TPMTPublic{
			Type:    tpm2.TPMAlgECC,
			NameAlg: tpm2.TPMAlgSHA256,
			ObjectAttributes: tpm2.TPMAObject{
				FixedTPM: true, FixedParent: true, SensitiveDataOrigin: true,
				UserWithAuth: true, SignEncrypt: true, NoDA: true,
			},
			Parameters: tpm2.NewTPMUPublicParms(tpm2.TPMAlgECC, &tpm2.TPMSECCParms{
				CurveID: tpm2.TPMECCNistP256,
				Scheme: tpm2.TPMTECCScheme{
					Scheme:  tpm2.TPMAlgECDSA,
					Details: tpm2.NewTPMUAsymScheme(tpm2.TPMAlgECDSA, &tpm2.TPMSSigSchemeECDSA{HashAlg: tpm2.TPMAlgSHA256}),
				},
			}),
		}),
	}.Execute(tpm)
	if err != nil {
		return opResult{}, fmt.Errorf("TPM2_CreatePrimary: %w", err)
	}
	defer tpm2.FlushContext{FlushHandle: rsp.ObjectHandle}.Execute(tpm)
	digest := sha256.Sum256([]byte("bare sign"))
	sign := tpm2.Sign{
		KeyHandle: tpm2.AuthHandle{Handle: rsp.ObjectHandle, Name: rsp.Name, Auth: tpm2.PasswordAuth(nil)},
		Digest:    tpm2.TPM2BDigest{Buffer: digest[:]},
		InScheme: tpm2.TPMTSigScheme{
			Scheme:  tpm2.TPMAlgECDSA,
			Details: tpm2.NewTPMUSigScheme(tpm2.TPMAlgECDSA, &tpm2.TPMSSchemeHash{HashAlg: tpm2.TPMAlgSHA256}),
		},
		Validation: tpm2.TPMTTKHashCheck{Tag: tpm2.TPMSTHashCheck, Hierarchy: tpm2.TPMRHNull},
	}
	return timeOp("bare TPM2_Sign (loaded key)", n, ct, func(int) error {
		_, err := sign.Execute(ct)
		return err
	})
}

// serveUnix serves the in-process stack st on a new unix socket at sock
// (the daemon's unix: transport) until ctx ends, and opens a client
// channel to it whose replies may take up to timeout. stop closes the
// channel, then stops the server.
func serveUnix(ctx context.Context, st *inproc.Stack, sock string, timeout time.Duration, log *slog.Logger) (ch *ctaphidtest.Channel, stop func(), err error) {
	dev, err := hidtransport.ListenUnix(sock, log)
	if err != nil {
		return nil, nil, err
	}
	stopServer := st.Serve(ctx, dev)
	ch, err = ctaphidtest.DialChannel(sock, timeout)
	if err != nil {
		stopServer()
		return nil, nil, err
	}
	return ch, func() { ch.Close(); stopServer() }, nil
}
