package browser

import (
	"bytes"
	"context"
	"crypto/sha256"
	_ "embed"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/go-webauthn/webauthn/protocol"
	"github.com/go-webauthn/webauthn/webauthn"
)

// The relying party: an HTTP server on localhost (a secure context for
// WebAuthn) whose one page is a puppet. The page long-polls /next for a
// ceremony, runs navigator.credentials.create or .get with the options
// go-webauthn made, and posts the result (the credential's toJSON(), or
// the error's name and message) to /result, where go-webauthn verifies it.

//go:embed page.html
var pageHTML []byte

// RPID is the relying party ID; the origin is http://localhost:PORT.
const RPID = "localhost"

// User is an account at the relying party.
type User struct {
	ID    []byte
	Name  string
	Creds []webauthn.Credential
}

// WebAuthnID implements webauthn.User.
func (u *User) WebAuthnID() []byte { return u.ID }

// WebAuthnName implements webauthn.User.
func (u *User) WebAuthnName() string { return u.Name }

// WebAuthnDisplayName implements webauthn.User.
func (u *User) WebAuthnDisplayName() string { return u.Name }

// WebAuthnCredentials implements webauthn.User.
func (u *User) WebAuthnCredentials() []webauthn.Credential { return u.Creds }

// command is one ceremony the page runs.
type command struct {
	ID      int             `json:"id"`
	Op      string          `json:"op"` // "create" or "get"
	Options json.RawMessage `json:"options"`
}

// pageResult is what the page posts back.
type pageResult struct {
	ID         int             `json:"id"`
	OK         bool            `json:"ok"`
	Name       string          `json:"name"`
	Message    string          `json:"message"`
	Credential json.RawMessage `json:"credential"`
}

// PageError is a ceremony the browser ended with a DOMException.
type PageError struct{ Name, Message string }

func (e *PageError) Error() string { return "the page got " + e.Name + ": " + e.Message }

// RP serves the page and verifies ceremonies.
type RP struct {
	Origin string
	wa     *webauthn.WebAuthn
	srv    *http.Server
	logf   func(string, ...any)

	mu      sync.Mutex
	page    string // the page that runs ceremonies (see /ready)
	nextID  int
	queue   chan command
	waiting map[int]chan pageResult
	ready   chan string // user agents of pages that loaded
}

// NewRP listens on 127.0.0.1:port and serves until ctx is done.
func NewRP(ctx context.Context, port int, logf func(string, ...any)) (*RP, error) {
	origin := fmt.Sprintf("http://localhost:%d", port)
	wa, err := webauthn.New(&webauthn.Config{
		RPID:                  RPID,
		RPDisplayName:         "tpm-fido e2e",
		RPOrigins:             []string{origin},
		AttestationPreference: protocol.PreferDirectAttestation,
		Timeouts: webauthn.TimeoutsConfig{
			Login:        webauthn.TimeoutConfig{Enforce: true, Timeout: 2 * time.Minute, TimeoutUVD: 2 * time.Minute},
			Registration: webauthn.TimeoutConfig{Enforce: true, Timeout: 2 * time.Minute, TimeoutUVD: 2 * time.Minute},
		},
	})
	if err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
	if err != nil {
		return nil, err
	}
	rp := &RP{Origin: origin, wa: wa, logf: logf, queue: make(chan command, 1),
		waiting: map[int]chan pageResult{}, ready: make(chan string, 8)}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		w.Header().Set("Cache-Control", "no-store")
		_, _ = w.Write(pageHTML)
	})
	mux.HandleFunc("POST /ready", func(w http.ResponseWriter, r *http.Request) {
		var v struct {
			UserAgent string `json:"userAgent"`
		}
		_ = json.NewDecoder(io.LimitReader(r.Body, 1<<16)).Decode(&v)
		// The last page to load is the one that runs ceremonies; an
		// older one (a tab that loaded late) is told to stop.
		rp.mu.Lock()
		rp.page = b64.EncodeToString(randomID())
		page := rp.page
		rp.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(map[string]string{"page": page})
		select {
		case rp.ready <- v.UserAgent:
		default:
		}
	})
	mux.HandleFunc("GET /next", rp.serveNext)
	mux.HandleFunc("POST /result", rp.serveResult)
	mux.HandleFunc("GET /favicon.ico", func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusNoContent) })
	rp.srv = &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = rp.srv.Serve(ln) }()
	go func() {
		<-ctx.Done()
		_ = rp.srv.Close()
	}()
	return rp, nil
}

// PageURL is the puppet page's address.
func (rp *RP) PageURL() string { return rp.Origin + "/" }

// WaitReady waits for a page to load and returns its user agent.
func (rp *RP) WaitReady(ctx context.Context) (string, error) {
	select {
	case ua := <-rp.ready:
		return ua, nil
	case <-ctx.Done():
		return "", fmt.Errorf("the page did not load: %w", context.Cause(ctx))
	}
}

func (rp *RP) serveNext(w http.ResponseWriter, r *http.Request) {
	rp.mu.Lock()
	current := rp.page
	rp.mu.Unlock()
	if r.URL.Query().Get("page") != current {
		http.Error(w, "a newer page took over", http.StatusGone)
		return
	}
	t := time.NewTimer(20 * time.Second)
	defer t.Stop()
	select {
	case c := <-rp.queue:
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Cache-Control", "no-store")
		_ = json.NewEncoder(w).Encode(c)
	case <-t.C:
		w.WriteHeader(http.StatusNoContent)
	case <-r.Context().Done():
	}
}

func (rp *RP) serveResult(w http.ResponseWriter, r *http.Request) {
	var res pageResult
	if err := json.NewDecoder(io.LimitReader(r.Body, 1<<20)).Decode(&res); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	rp.mu.Lock()
	ch := rp.waiting[res.ID]
	delete(rp.waiting, res.ID)
	rp.mu.Unlock()
	if ch == nil {
		http.Error(w, "no such ceremony", http.StatusNotFound)
		return
	}
	ch <- res
}

// run hands one ceremony to the page and waits for its result.
func (rp *RP) run(ctx context.Context, op string, options any) (pageResult, error) {
	opts, err := json.Marshal(options)
	if err != nil {
		return pageResult{}, err
	}
	rp.mu.Lock()
	rp.nextID++
	c := command{ID: rp.nextID, Op: op, Options: opts}
	ch := make(chan pageResult, 1)
	rp.waiting[c.ID] = ch
	rp.mu.Unlock()
	defer func() {
		rp.mu.Lock()
		delete(rp.waiting, c.ID)
		rp.mu.Unlock()
	}()
	select {
	case rp.queue <- c:
	case <-ctx.Done():
		return pageResult{}, fmt.Errorf("the page did not fetch the %s ceremony: %w", op, context.Cause(ctx))
	}
	select {
	case res := <-ch:
		if !res.OK {
			return res, &PageError{Name: res.Name, Message: res.Message}
		}
		return res, nil
	case <-ctx.Done():
		return pageResult{}, fmt.Errorf("the page did not finish the %s ceremony: %w", op, context.Cause(ctx))
	}
}

// ErrNoUV: the browser returned a new credential without user
// verification though the relying party required it (go-webauthn rejects
// such a registration too).
var ErrNoUV = errors.New("the new credential's authData lacks the UV flag though user verification was required")

// Verified is what the relying party checked, one line per fact.
type Verified []string

func (v *Verified) add(format string, args ...any) { *v = append(*v, fmt.Sprintf(format, args...)) }

var b64 = base64.RawURLEncoding

// Register runs a registration ceremony for user and verifies it with
// go-webauthn (attestation statement and its signature, clientData type,
// origin and challenge, rpIdHash, flags), then checks the same facts
// itself and records them. The new credential is added to user.
func (rp *RP) Register(ctx context.Context, user *User, uvRequired, resident bool) (*webauthn.Credential, Verified, error) {
	sel := protocol.AuthenticatorSelection{
		ResidentKey:      protocol.ResidentKeyRequirementDiscouraged,
		UserVerification: protocol.VerificationDiscouraged,
	}
	if resident {
		sel.ResidentKey = protocol.ResidentKeyRequirementRequired
		sel.RequireResidentKey = protocol.ResidentKeyRequired()
	}
	if uvRequired {
		sel.UserVerification = protocol.VerificationRequired
	}
	opts := []webauthn.RegistrationOption{
		webauthn.WithAuthenticatorSelection(sel),
		webauthn.WithConveyancePreference(protocol.PreferDirectAttestation),
		webauthn.WithExtensions(webauthn.WithExtensionCredProps()),
		webauthn.WithExclusions(webauthn.Credentials(user.Creds).CredentialDescriptors()),
	}
	creation, session, err := rp.wa.BeginRegistration(user, opts...)
	if err != nil {
		return nil, nil, fmt.Errorf("BeginRegistration: %w", err)
	}
	res, err := rp.run(ctx, "create", creation.Response)
	if err != nil {
		return nil, nil, err
	}
	parsed, err := protocol.ParseCredentialCreationResponseBytes(res.Credential)
	if err != nil {
		return nil, nil, fmt.Errorf("parsing the browser's registration response: %w", err)
	}
	if uvRequired && !parsed.Response.AttestationObject.AuthData.Flags.UserVerified() {
		return nil, nil, ErrNoUV
	}
	cred, err := rp.wa.CreateCredential(user, *session, parsed)
	if err != nil {
		return nil, nil, fmt.Errorf("go-webauthn rejects the registration: %w", describe(err))
	}
	var v Verified
	ao := parsed.Response.AttestationObject
	// Self attestation is "surrogate basic attestation" in WebAuthn's words.
	if ao.Format != "packed" || (cred.AttestationType != "self" && cred.AttestationType != "basic_surrogate") {
		return nil, nil, fmt.Errorf("attestation is %s/%s, want packed self-attestation", ao.Format, cred.AttestationType)
	}
	if _, hasX5C := ao.AttStatement["x5c"]; hasX5C {
		return nil, nil, errors.New("packed attestation carries an x5c chain, want self-attestation")
	}
	alg, _ := ao.AttStatement["alg"].(int64)
	v.add("go-webauthn: registration verified; attestation fmt=%s type=%s alg=%d: signature over authData||SHA-256(clientDataJSON) checked with the new credential key", ao.Format, cred.AttestationType, alg)
	if err := checkClientData(&v, parsed.Response.CollectedClientData, protocol.CreateCeremony, rp.Origin, session.Challenge); err != nil {
		return nil, nil, err
	}
	ad := ao.AuthData
	if err := checkAuthData(&v, ad.RPIDHash, ad.Flags, true, uvRequired); err != nil {
		return nil, nil, err
	}
	if !ad.Flags.HasAttestedCredentialData() {
		return nil, nil, errors.New("authData has no attested credential data (AT flag clear)")
	}
	v.add("credential: id %s… (%d bytes), aaguid %x, COSE key %d bytes, counter %d", b64.EncodeToString(cred.ID)[:16], len(cred.ID), ad.AttData.AAGUID, len(cred.PublicKey), ad.Counter)
	if resident {
		rk := parsed.ClientExtensionResults.CredProps
		if rk == nil || rk.RK == nil || !*rk.RK {
			return nil, nil, fmt.Errorf("the browser's credProps does not say rk=true: %+v", rk)
		}
		v.add("credProps: rk=true (the browser reports a discoverable credential)")
	}
	user.Creds = append(user.Creds, *cred)
	return cred, v, nil
}

// Login runs an authentication ceremony. With discoverable set it sends an
// empty allowCredentials and finds the user by the returned userHandle,
// which must equal user.ID; otherwise allowCredentials lists user's
// credentials. The signature counter must have grown; user's record of it
// is updated.
func (rp *RP) Login(ctx context.Context, user *User, uvRequired, discoverable bool) (*webauthn.Credential, Verified, error) {
	uv := protocol.VerificationDiscouraged
	if uvRequired {
		uv = protocol.VerificationRequired
	}
	var (
		assertion *protocol.CredentialAssertion
		session   *webauthn.SessionData
		err       error
	)
	if discoverable {
		assertion, session, err = rp.wa.BeginDiscoverableLogin(webauthn.WithUserVerification(uv))
	} else {
		assertion, session, err = rp.wa.BeginLogin(user, webauthn.WithUserVerification(uv))
	}
	if err != nil {
		return nil, nil, fmt.Errorf("BeginLogin: %w", err)
	}
	allow := len(assertion.Response.AllowedCredentials)
	res, err := rp.run(ctx, "get", assertion.Response)
	if err != nil {
		return nil, nil, err
	}
	parsed, err := protocol.ParseCredentialRequestResponseBytes(res.Credential)
	if err != nil {
		return nil, nil, fmt.Errorf("parsing the browser's assertion: %w", err)
	}
	var stored *webauthn.Credential
	for i := range user.Creds {
		if bytes.Equal(user.Creds[i].ID, parsed.RawID) {
			stored = &user.Creds[i]
		}
	}
	if stored == nil {
		return nil, nil, fmt.Errorf("the browser signed with credential %s, which %s never registered", b64.EncodeToString(parsed.RawID), user.Name)
	}
	before := stored.Authenticator.SignCount
	var cred *webauthn.Credential
	var v Verified
	if discoverable {
		uh := parsed.Response.UserHandle
		if !bytes.Equal(uh, user.ID) {
			return nil, nil, fmt.Errorf("userHandle %x does not match the user id %x", uh, user.ID)
		}
		cred, err = rp.wa.ValidateDiscoverableLogin(func(rawID, userHandle []byte) (webauthn.User, error) {
			if !bytes.Equal(userHandle, user.ID) {
				return nil, fmt.Errorf("unknown userHandle %x", userHandle)
			}
			return user, nil
		}, *session, parsed)
		if err == nil {
			v.add("go-webauthn: discoverable login verified with allowCredentials empty (%d sent); userHandle %x = the registered user.id", allow, uh)
		}
	} else {
		cred, err = rp.wa.ValidateLogin(user, *session, parsed)
		if err == nil {
			v.add("go-webauthn: login verified with allowCredentials = %d credential(s)", allow)
		}
	}
	if err != nil {
		return nil, nil, fmt.Errorf("go-webauthn rejects the assertion: %w", describe(err))
	}
	v.add("signature: ES256 over authData||SHA-256(clientDataJSON) checked with the key registered for %s…", b64.EncodeToString(cred.ID)[:16])
	if err := checkClientData(&v, parsed.Response.CollectedClientData, protocol.AssertCeremony, rp.Origin, session.Challenge); err != nil {
		return nil, nil, err
	}
	ad := parsed.Response.AuthenticatorData
	if err := checkAuthData(&v, ad.RPIDHash, ad.Flags, true, uvRequired); err != nil {
		return nil, nil, err
	}
	after := ad.Counter
	if after <= before || cred.Authenticator.CloneWarning {
		return nil, nil, fmt.Errorf("signature counter went from %d to %d (it must grow)", before, after)
	}
	v.add("counter: %d -> %d (grew)", before, after)
	stored.Authenticator.SignCount = after
	return cred, v, nil
}

func checkClientData(v *Verified, cd protocol.CollectedClientData, typ protocol.CeremonyType, origin, challenge string) error {
	if cd.Type != typ {
		return fmt.Errorf("clientData type %q, want %q", cd.Type, typ)
	}
	if cd.Origin != origin {
		return fmt.Errorf("clientData origin %q, want %q", cd.Origin, origin)
	}
	if cd.Challenge != challenge {
		return fmt.Errorf("clientData challenge %q is not the session's %q", cd.Challenge, challenge)
	}
	v.add("clientData: type=%s origin=%s challenge=%s… (the session's)", cd.Type, cd.Origin, cd.Challenge[:12])
	return nil
}

func checkAuthData(v *Verified, rpIDHash []byte, flags protocol.AuthenticatorFlags, up, uv bool) error {
	want := sha256.Sum256([]byte(RPID))
	if !bytes.Equal(rpIDHash, want[:]) {
		return fmt.Errorf("rpIdHash %x is not SHA-256(%q)", rpIDHash, RPID)
	}
	if up && !flags.UserPresent() {
		return errors.New("UP flag clear")
	}
	if uv && !flags.UserVerified() {
		return errors.New("UV flag clear though user verification was required")
	}
	v.add("authData: rpIdHash=SHA-256(%q) flags=%s", RPID, flagString(flags))
	return nil
}

func flagString(f protocol.AuthenticatorFlags) string {
	var s []string
	for _, x := range []struct {
		on   bool
		name string
	}{{f.UserPresent(), "UP"}, {f.UserVerified(), "UV"}, {f.HasBackupEligible(), "BE"}, {f.HasBackupState(), "BS"},
		{f.HasAttestedCredentialData(), "AT"}, {f.HasExtensions(), "ED"}} {
		if x.on {
			s = append(s, x.name)
		}
	}
	return fmt.Sprintf("0x%02x(%s)", byte(f), strings.Join(s, ","))
}

// describe adds go-webauthn's details to its error.
func describe(err error) error {
	var pe *protocol.Error
	if errors.As(err, &pe) {
		return fmt.Errorf("%w (%s; %s)", err, pe.Details, pe.DevInfo)
	}
	return err
}
