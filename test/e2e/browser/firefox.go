package browser

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// Firefox runs Debian's firefox-esr, non-headless on the session's X
// server, driven through Marionette (its remote-control protocol). The
// relying party's page runs on its own; Watch reads Firefox's WebAuthn UI
// from its chrome (the browser's own windows, reachable with
// -remote-allow-system-access): the PIN prompt is a tab-modal password
// dialog, which Marionette reports as an open user prompt, and the other
// WebAuthn prompts are popup notifications with known ids. PINs are typed
// with xdotool; popup buttons are clicked through the chrome DOM.
type Firefox struct {
	D       *Desktop
	Profile string
	Logf    func(string, ...any)

	proc    *Proc
	m       *Marionette
	content string // window handle of the relying party's tab
}

// Name implements Browser.
func (f *Firefox) Name() string { return "firefox" }

// firefoxPrefs keep Firefox off the network (the guest has none) and
// without first-run pages, and start fewer processes (one content
// process, no separate socket, extension or privileged-content process,
// no prelaunched spares), which under emulation is what start-up time is
// made of. WebAuthn runs in the parent process either way. Marionette
// adds its own recommended preferences on top (telemetry, updates, safe
// browsing off).
const firefoxPrefs = `user_pref("browser.shell.checkDefaultBrowser", false);
user_pref("browser.startup.homepage_override.mstone", "ignore");
user_pref("browser.startup.page", 0);
user_pref("browser.aboutwelcome.enabled", false);
user_pref("browser.newtabpage.enabled", false);
user_pref("datareporting.policy.dataSubmissionEnabled", false);
user_pref("toolkit.telemetry.reportingpolicy.firstRun", false);
user_pref("app.update.disabledForTesting", true);
user_pref("app.normandy.enabled", false);
user_pref("network.captive-portal-service.enabled", false);
user_pref("network.connectivity-service.enabled", false);
user_pref("services.settings.server", "http://127.0.0.1:9/");
user_pref("browser.safebrowsing.malware.enabled", false);
user_pref("browser.safebrowsing.phishing.enabled", false);
user_pref("extensions.update.enabled", false);
user_pref("marionette.port", 2828);
user_pref("fission.autostart", false);
user_pref("dom.ipc.processCount", 1);
user_pref("dom.ipc.processPrelaunch.enabled", false);
user_pref("extensions.webextensions.remote", false);
user_pref("browser.tabs.remote.separatePrivilegedContentProcess", false);
user_pref("network.process.enabled", false);
user_pref("extensions.pocket.enabled", false);
user_pref("browser.startup.preXulSkeletonUI", false);
user_pref("accessibility.force_disabled", 1);
`

// Start implements Browser.
func (f *Firefox) Start(ctx context.Context, url string) error {
	if err := os.MkdirAll(f.Profile, 0o700); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(f.Profile, "user.js"), []byte(firefoxPrefs), 0o600); err != nil {
		return err
	}
	p, err := f.D.Start("firefox", "firefox.log", nil, []string{"MOZ_CRASHREPORTER_DISABLE=1"},
		"firefox-esr", "--marionette", "-remote-allow-system-access", "--no-remote",
		"--profile", f.Profile, "about:blank")
	if err != nil {
		return err
	}
	f.proc = p
	deadline := time.Now().Add(4 * time.Minute)
	for {
		m, err := DialMarionette("127.0.0.1:2828", 30*time.Second)
		if err == nil {
			f.m = m
			break
		}
		if ok, perr := p.Exited(); ok {
			return fmt.Errorf("firefox exited (%v) before Marionette listened", perr)
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("Marionette did not listen within 4 minutes: %w", err)
		}
		time.Sleep(500 * time.Millisecond)
	}
	f.Logf("firefox: Marionette listening")
	// "ignore": an open prompt is left alone, and each command reports it
	// (that is how Watch sees the PIN prompt).
	if err := f.m.Call(3*time.Minute, "WebDriver:NewSession", map[string]any{"unhandledPromptBehavior": "ignore"}, nil); err != nil {
		return err
	}
	var h struct {
		Value string `json:"value"`
	}
	if err := f.m.Call(30*time.Second, "WebDriver:GetWindowHandle", nil, &h); err != nil {
		return err
	}
	f.content = h.Value
	f.Logf("firefox: WebDriver session")
	if err := f.m.Call(2*time.Minute, "WebDriver:Navigate", map[string]any{"url": url}, nil); err != nil {
		return err
	}
	if err := f.m.SetContext("chrome"); err != nil {
		return err
	}
	// Remember the relying party's tab, to come back to it.
	return f.m.Script(30*time.Second, `window.e2eRPTab = gBrowser.selectedTab; return null;`, nil)
}

// Open implements Browser.
func (f *Firefox) Open(ctx context.Context, url string) error {
	if err := f.m.SetContext("content"); err != nil {
		return err
	}
	if err := f.m.Call(30*time.Second, "WebDriver:SwitchToWindow", map[string]any{"handle": f.content}, nil); err != nil {
		return err
	}
	if err := f.m.Call(2*time.Minute, "WebDriver:Navigate", map[string]any{"url": url}, nil); err != nil {
		return err
	}
	return f.m.SetContext("chrome")
}

// Stop implements Browser.
func (f *Firefox) Stop() error {
	if f.m != nil {
		_ = f.m.Call(30*time.Second, "Marionette:Quit", nil, nil)
		f.m.Close()
	}
	if f.proc == nil {
		return nil
	}
	if ok, _ := f.proc.Wait(30 * time.Second); ok {
		return nil
	}
	return f.proc.Stop(10 * time.Second)
}

// Watch implements Browser.
func (f *Firefox) Watch(ctx context.Context, pin string) *UI {
	u := newUI()
	go func() {
		defer close(u.done)
		clicked := map[string]bool{}
		pinTyped := time.Time{}
		for ctx.Err() == nil {
			var ids []string
			err := f.m.Script(20*time.Second, `
				const ids = [];
				const p = document.getElementById("notification-popup");
				if (p && p.state === "open") {
					for (const n of p.children) {
						if (n.id && n.id.startsWith("webauthn-prompt-")) ids.push(n.id);
					}
				}
				return ids;`, &ids)
			if text, ok := isPromptOpen(err); ok {
				u.step("prompt: " + text)
				if !strings.Contains(text, "PIN") {
					u.fail(fmt.Errorf("unexpected Firefox prompt %q", text))
				} else if time.Since(pinTyped) > 10*time.Second {
					// The dialog focuses its password field when it opens.
					time.Sleep(800 * time.Millisecond)
					u.tag(UIPinEntry)
					pinTyped = time.Now()
					if err := f.D.Type(pin, "Return"); err != nil {
						u.fail(err)
					}
				}
			} else if err != nil {
				if ctx.Err() == nil {
					u.fail(fmt.Errorf("reading Firefox's UI: %w", err))
				}
				return
			}
			for _, id := range ids {
				name := strings.TrimSuffix(strings.TrimPrefix(id, "webauthn-prompt-"), "-notification")
				u.step("popup: " + name)
				switch name {
				case "presence":
					if !u.Has(UIPresenceShown) {
						u.tag(UIPresenceShown)
					}
					continue
				case "register-direct":
					// "localhost is requesting extended information
					// about your security key": Allow, so the relying
					// party gets the attestation statement.
					if !clicked[id] {
						u.tag(UIAttestation)
					}
				case "pinNotSet":
					if !clicked[id] {
						u.tag(UIPinNotSet)
					}
				default:
					if !clicked[id] {
						u.tag(UIErrorShown)
					}
				}
				if clicked[id] {
					continue
				}
				clicked[id] = true
				if err := f.m.Script(20*time.Second, `document.getElementById(`+jsString(id)+`).button.click(); return null;`, nil); err != nil {
					u.fail(fmt.Errorf("clicking %s: %w", name, err))
				}
			}
			select {
			case <-ctx.Done():
			case <-time.After(400 * time.Millisecond):
			}
		}
	}()
	return u
}

// SetPIN implements Browser: Firefox's own security key page,
// about:webauthn, "PIN Management": the new PIN typed twice, "Set PIN".
func (f *Firefox) SetPIN(ctx context.Context, pin string) error {
	var before, after []string
	if err := f.m.SetContext("content"); err != nil {
		return err
	}
	if err := f.m.Call(30*time.Second, "WebDriver:GetWindowHandles", nil, &before); err != nil {
		return err
	}
	if err := f.m.SetContext("chrome"); err != nil {
		return err
	}
	if err := f.m.Script(30*time.Second, `gBrowser.selectedTab = gBrowser.addTab("about:webauthn",
		{triggeringPrincipal: Services.scriptSecurityManager.getSystemPrincipal()}); return null;`, nil); err != nil {
		return fmt.Errorf("opening about:webauthn: %w", err)
	}
	defer func() {
		// Close the page (it keeps the key open while it shows) and go
		// back to the relying party's tab.
		_ = f.m.SetContext("content")
		_ = f.m.Call(30*time.Second, "WebDriver:SwitchToWindow", map[string]any{"handle": f.content}, nil)
		_ = f.m.SetContext("chrome")
		_ = f.m.Script(30*time.Second, `for (const t of [...gBrowser.tabs]) {
				if (t.linkedBrowser.currentURI.spec === "about:webauthn") gBrowser.removeTab(t);
			}
			gBrowser.selectedTab = window.e2eRPTab;
			window.focus();
			return null;`, nil)
	}()
	if err := f.m.SetContext("content"); err != nil {
		return err
	}
	if err := f.m.Call(30*time.Second, "WebDriver:GetWindowHandles", nil, &after); err != nil {
		return err
	}
	var tab string
	for _, h := range after {
		if !slices.Contains(before, h) {
			tab = h
		}
	}
	if tab == "" {
		return fmt.Errorf("about:webauthn opened no new tab (%d before, %d after)", len(before), len(after))
	}
	if err := f.m.Call(30*time.Second, "WebDriver:SwitchToWindow", map[string]any{"handle": tab}, nil); err != nil {
		return err
	}
	// The PIN tab appears once the page has read the key's info.
	if err := f.poll(ctx, time.Minute, `const b = document.getElementById("pin-tab-button");
		return !!b && getComputedStyle(b).display !== "none";`); err != nil {
		return fmt.Errorf("about:webauthn shows no PIN Management: %w", err)
	}
	if err := f.click("#pin-tab-button"); err != nil {
		return err
	}
	if err := f.click("#new-pin"); err != nil {
		return err
	}
	if err := f.D.Type(pin); err != nil {
		return err
	}
	if err := f.click("#new-pin-repeat"); err != nil {
		return err
	}
	if err := f.D.Type(pin); err != nil {
		return err
	}
	if err := f.poll(ctx, 20*time.Second, `return !document.getElementById("set-pin-button").disabled;`); err != nil {
		return fmt.Errorf("the Set PIN button stays disabled (the typed PINs did not arrive?): %w", err)
	}
	// Clear the results banner, so that only this command's result counts.
	if err := f.m.Script(10*time.Second, `const r = document.getElementById("ctap-listen-result");
		if (r) r.className = ""; return null;`, nil); err != nil {
		return err
	}
	if err := f.click("#set-pin-button"); err != nil {
		return err
	}
	// The page shows the outcome in its results banner: class "success"
	// or "error", and the message's l10n id.
	var result string
	err := f.poll(ctx, time.Minute, `const r = document.getElementById("ctap-listen-result");
		return !!r && (r.classList.contains("success") || r.classList.contains("error"));`)
	_ = f.m.Script(10*time.Second, `const r = document.getElementById("ctap-listen-result");
		return r.className + " " + r.getAttribute("data-l10n-id");`, &result)
	if err != nil {
		return fmt.Errorf("about:webauthn gave no result for Set PIN: %w", err)
	}
	if !strings.Contains(result, "success") {
		return fmt.Errorf("about:webauthn: Set PIN says %q", result)
	}
	return nil
}

func (f *Firefox) click(css string) error {
	var el struct {
		Value map[string]string `json:"value"`
	}
	if err := f.m.Call(30*time.Second, "WebDriver:FindElement", map[string]any{"using": "css selector", "value": css}, &el); err != nil {
		return fmt.Errorf("finding %s: %w", css, err)
	}
	var id string
	for _, v := range el.Value {
		id = v
	}
	if err := f.m.Call(30*time.Second, "WebDriver:ElementClick", map[string]any{"id": id}, nil); err != nil {
		return fmt.Errorf("clicking %s: %w", css, err)
	}
	return nil
}

// poll runs script until it returns true.
func (f *Firefox) poll(ctx context.Context, limit time.Duration, script string) error {
	var lastErr error
	err := waitFor(ctx, limit, "a true "+strings.Fields(script)[0]+"…", func() bool {
		var ok bool
		lastErr = f.m.Script(20*time.Second, script, &ok)
		return lastErr == nil && ok
	})
	if err != nil && lastErr != nil {
		return fmt.Errorf("%w (last: %v)", err, lastErr)
	}
	return err
}

func jsString(s string) string {
	b, _ := json.Marshal(s)
	return string(b)
}
