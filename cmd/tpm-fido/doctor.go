package main

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/google/go-tpm/tpm2"
	"golang.org/x/sys/unix"

	"github.com/tpm-fido/tpm-fido/presence"
	"github.com/tpm-fido/tpm-fido/relay"
	"github.com/tpm-fido/tpm-fido/tpmstore"
	"github.com/tpm-fido/tpm-fido/udev"
)

// doctorEnv is where doctor looks; tests point it at fake trees.
type doctorEnv struct {
	transport  string // --transport; "" means relay, the default
	relaySock  string // the relay's socket, for relay transports
	uhid       string // /dev/uhid
	sysModule  string // /sys/module/uhid
	hidraw     string // /sys/class/hidraw
	udevData   string // /run/udev/data
	dev        string // /dev
	tpm        string // --tpm
	stateDir   string
	promptName string // --presence
	presence   presence.Options
	tpmTimeout time.Duration
}

type checkStatus int

const (
	checkOK checkStatus = iota
	checkWarn
	checkFail
)

// check is one finding: what was checked, what was found, how to fix it.
type check struct {
	status checkStatus
	what   string
	detail string
	fix    string
}

func runDoctor(args []string, stdout, stderr io.Writer) int {
	fl := newFlagSet("doctor", "doctor [FLAGS]",
		"Check what the daemon needs (uhid, the relay, the TPM, the state directory,\n"+
			"the prompt, the virtual key) and print each problem with its fix. Give it\n"+
			"the flags the daemon is given. Exits 1 when a check failed.")
	sf := addStoreFlags(fl.FlagSet)
	promptName := fl.String("presence", presence.BackendAuto, "the --presence `NAME` the daemon is given")
	insecure := fl.Bool("insecure-test-mode", false, "as given to the daemon: lets --presence name a fixed test answer")
	pinentry := fl.String("pinentry", "", "the pinentry `PROGRAM` the daemon is given")
	transportSpec := fl.String("transport", "relay", "the --transport `SPEC` the daemon is given")
	if code, ok := fl.parse(args, 0, 0, stdout, stderr); !ok {
		return code
	}
	env := doctorEnv{
		transport: *transportSpec, relaySock: relaySocket(*transportSpec),
		uhid: "/dev/uhid", sysModule: "/sys/module/uhid", hidraw: "/sys/class/hidraw",
		udevData: "/run/udev/data", dev: "/dev", tpm: sf.tpm, stateDir: sf.stateDir,
		promptName: *promptName,
		presence:   presence.Options{PinentryProgram: *pinentry, InsecureTestMode: *insecure},
		tpmTimeout: 5 * time.Second,
	}
	return printChecks(stdout, env.run())
}

func printChecks(w io.Writer, checks []check) int {
	fails, warns := 0, 0
	for _, c := range checks {
		tag := "ok  "
		switch c.status {
		case checkWarn:
			tag = "WARN"
			warns++
		case checkFail:
			tag = "FAIL"
			fails++
		}
		fmt.Fprintf(w, "%s  %-8s %s\n", tag, c.what+":", c.detail)
		if c.status != checkOK && c.fix != "" {
			label := "fix:"
			for _, l := range strings.Split(c.fix, "\n") {
				fmt.Fprintf(w, "      %-8s %s\n", label, l)
				label = ""
			}
		}
	}
	switch {
	case fails > 0:
		fmt.Fprintf(w, "\n%d problem(s), %d warning(s)\n", fails, warns)
		return 1
	case warns > 0:
		fmt.Fprintf(w, "\nno problems, %d warning(s)\n", warns)
	default:
		fmt.Fprintln(w, "\nall checks passed")
	}
	return 0
}

// relaySocket is the relay socket a transport spec names, or "" when it
// names no relay.
func relaySocket(spec string) string {
	if spec == "relay" || spec == "" {
		return relay.DefaultSocket
	}
	if p, ok := strings.CutPrefix(spec, "relay:"); ok {
		return p
	}
	return ""
}

// viaRelay reports whether the daemon gets its device from the relay.
func (e doctorEnv) viaRelay() bool { return e.transport == "" || relaySocket(e.transport) != "" }

func (e doctorEnv) run() []check {
	var cs []check
	cs = append(cs, e.checkUHID()...)
	if e.viaRelay() {
		cs = append(cs, e.checkRelay())
	}
	cs = append(cs, e.checkTPM()...)
	cs = append(cs, e.checkStateDir())
	cs = append(cs, e.checkResidents())
	cs = append(cs, e.checkPresence())
	cs = append(cs, e.checkDevice())
	return cs
}

func groupName(gid uint32) string {
	if g, err := user.LookupGroupId(strconv.Itoa(int(gid))); err == nil {
		return g.Name
	}
	return strconv.Itoa(int(gid))
}

func (e doctorEnv) checkUHID() []check {
	const what = "uhid"
	loadFix := "sudo modprobe uhid\nsudo tpm-fido setup   # loads it at every boot (modules-load.d)"
	fi, err := os.Stat(e.uhid)
	if err != nil {
		c := check{checkFail, what, e.uhid + " does not exist", loadFix}
		if !exists(e.sysModule) {
			c.detail = "the uhid kernel module is not loaded and " + e.uhid + " does not exist"
			c.fix += "\n(if modprobe fails, this kernel has no uhid (CONFIG_UHID): use a distribution kernel, or --transport unix:PATH for tests)"
		}
		return []check{c}
	}
	var cs []check
	st, _ := fi.Sys().(*syscall.Stat_t)
	if fi.Mode()&fs.ModeCharDevice == 0 || st == nil {
		return []check{{checkFail, what, e.uhid + " is not a character device", "sudo rm " + e.uhid + " && sudo modprobe -r uhid && sudo modprobe uhid"}}
	}
	group := groupName(st.Gid)
	mode := fi.Mode().Perm()
	desc := fmt.Sprintf("%s (group %s, mode %04o)", e.uhid, group, mode)
	if mode&0o006 != 0 {
		cs = append(cs, check{checkWarn, what, desc + " is open to every local user, who could create a virtual keyboard",
			"sudo tpm-fido setup && sudo udevadm control --reload && sudo udevadm trigger --subsystem-match=misc --sysname-match=uhid   # group " + udev.Group + ", mode 0660"})
	}
	writable := unix.Access(e.uhid, unix.R_OK|unix.W_OK) == nil
	setupFix := "sudo tpm-fido setup && sudo systemd-sysusers && sudo udevadm control --reload && sudo udevadm trigger --subsystem-match=misc --sysname-match=uhid   # group " + udev.Group + ", mode 0660"
	if !e.viaRelay() {
		// The daemon opens /dev/uhid itself.
		if !writable {
			return append(cs, check{checkFail, what, desc + " is not writable by you, and --transport " + e.transport + " opens it directly",
				"use the relay, which needs no right on " + e.uhid + ": --transport relay (the default)"})
		}
		return append(cs, check{checkOK, what, desc + " is writable", ""})
	}
	// Through the relay: the relay's user opens /dev/uhid, this user need not.
	switch {
	case group != udev.Group || mode&0o060 != 0o060:
		cs = append(cs, check{checkWarn, what, desc + ": the relay's group " + udev.Group + " cannot open it", setupFix})
	case writable && os.Geteuid() != 0:
		cs = append(cs, check{checkWarn, what, desc + " is writable by you, so every program of yours could create a keyboard; the relay makes that right unnecessary",
			"sudo gpasswd -d \"$USER\" " + group + ", then log out and in again"})
	case !writable:
		cs = append(cs, check{checkOK, what, desc + " (not writable by you: the relay creates the key's device)", ""})
	default:
		cs = append(cs, check{checkOK, what, desc, ""})
	}
	return cs
}

// checkRelay asks the relay whether it serves this user, without making
// a device.
func (e doctorEnv) checkRelay() check {
	const what = "relay"
	msg, err := relay.Probe(e.relaySock)
	switch {
	case errors.Is(err, relay.ErrNotRunning):
		return check{checkFail, what, "the relay is not running: nothing listens on " + e.relaySock,
			"sudo tpm-fido setup   # installs tpm-fido-relay.service\nsudo systemctl enable --now tpm-fido-relay.service\njournalctl -u tpm-fido-relay   # why it stopped, if it did"}
	case errors.Is(err, relay.ErrRefused):
		return check{checkFail, what, e.relaySock + ": " + err.Error(), `sudo tpm-fido setup --allow-user "$USER"   # adds you to ` + relay.DefaultUsersFile}
	case err != nil:
		return check{checkFail, what, err.Error(), "sudo systemctl restart tpm-fido-relay.service; journalctl -u tpm-fido-relay"}
	}
	return check{checkOK, what, e.relaySock + " answers: " + msg, ""}
}

func (e doctorEnv) checkTPM() []check {
	const what = "tpm"
	if !strings.HasPrefix(e.tpm, "swtpm:") {
		fi, err := os.Stat(e.tpm)
		if err != nil {
			return []check{{checkFail, what, "no TPM at " + e.tpm,
				"enable the TPM (fTPM/PTT) in the firmware setup, or give a VM a virtual TPM (qemu -tpmdev / swtpm)\nfor tests: --tpm swtpm:SOCKET with a swtpm socket"}}
		}
		if fi.Mode()&fs.ModeCharDevice == 0 {
			return []check{{checkFail, what, e.tpm + " is not a device", "use --tpm swtpm:SOCKET for a swtpm socket"}}
		}
		if err := unix.Access(e.tpm, unix.R_OK|unix.W_OK); err != nil {
			group := "?"
			if st, ok := fi.Sys().(*syscall.Stat_t); ok {
				group = groupName(st.Gid)
			}
			return []check{{checkFail, what, fmt.Sprintf("%s (group %s, mode %04o) is not writable by you", e.tpm, group, fi.Mode().Perm()),
				"sudo apt install tpm-udev   # gives the tss group rw on /dev/tpmrm0\nsudo usermod -aG tss \"$USER\", then log out and in again"}}
		}
	}
	type result struct {
		curves []tpm2.TPMECCCurve
		da     tpmstore.DAStatus
		daErr  error
		err    error
	}
	done := make(chan result, 1)
	go func() {
		t, err := openTPM(e.tpm)
		if err != nil {
			done <- result{err: err}
			return
		}
		defer t.Close()
		rsp, err := tpm2.GetCapability{Capability: tpm2.TPMCapECCCurves, PropertyCount: 64}.Execute(t)
		if err != nil {
			done <- result{err: fmt.Errorf("TPM2_GetCapability(ECC curves): %w", err)}
			return
		}
		l, err := rsp.CapabilityData.Data.ECCCurves()
		if err != nil {
			done <- result{err: err}
			return
		}
		da, daErr := tpmstore.ReadDAStatus(t)
		done <- result{curves: l.ECCCurves, da: da, daErr: daErr}
	}()
	var r result
	select {
	case r = <-done:
	case <-time.After(e.tpmTimeout):
		return []check{{checkFail, what, fmt.Sprintf("%s did not answer within %s", e.tpm, e.tpmTimeout),
			"another program may hold the TPM (a swtpm socket serves one client at a time): stop it, or check `dmesg | grep -i tpm`"}}
	}
	if r.err != nil {
		return []check{{checkFail, what, r.err.Error(), "check `dmesg | grep -i tpm`; the TPM must be a TPM 2.0"}}
	}
	if !slices.Contains(r.curves, tpm2.TPMECCNistP256) {
		return []check{{checkFail, what, e.tpm + " does not support ECC P-256, which every credential key needs", "this TPM cannot be used; a TPM 2.0 with ECC P-256 (every PC Client TPM) is required"}}
	}
	cs := []check{{checkOK, what, e.tpm + " answers and supports ECC P-256", ""}}
	if r.daErr != nil {
		return append(cs, check{checkWarn, "tpm-da", r.daErr.Error(), "check `dmesg | grep -i tpm`"})
	}
	if r.da.OwnerAuthSet {
		cs[0] = check{checkFail, what, e.tpm + "'s owner hierarchy has a password: tpm-fido cannot create its storage key under it",
			"clear the owner password (tpm2_changeauth -c owner -p OLD_PASSWORD), or use another TPM"}
	}
	pin, why := e.pinState()
	return append(cs, daCheck(r.da), lockoutCheck(r.da, pin, why))
}

// pinKnowledge is what doctor can tell about the state's PIN.
type pinKnowledge int

const (
	pinUnknown pinKnowledge = iota // the daemon holds the state, or it cannot be read
	pinNotSet
	pinIsSet
)

// pinState reads whether a PIN is set, without the TPM; when it cannot
// tell, it says why.
func (e doctorEnv) pinState() (pinKnowledge, string) {
	u, err := tpmstore.ReadUsage(e.stateDir)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return pinNotSet, ""
	case errors.Is(err, tpmstore.ErrStateInUse):
		return pinUnknown, "the running daemon holds the state"
	case err != nil:
		return pinUnknown, "the state cannot be read"
	case u.PINSet:
		return pinIsSet, ""
	}
	return pinNotSet, ""
}

// lockoutAdvice is the one line `pin set` and `pin change` print when
// the TPM's lockout password is empty.
const lockoutAdvice = "note: this TPM has no lockout password, so whoever can open it and holds a copy of your state directory can guess this PIN at the TPM's speed; set one (machine-wide) and keep it safe: " +
	tpmstore.SetLockoutAuthCommand + " (see `tpm-fido doctor`)"

// lockoutCheck says whether the TPM limits guesses of the PIN that
// verify-required (credProtect 3) keys need: only while its lockout
// password is set, or anyone who can open the TPM resets its
// dictionary-attack counter (TPM2_DictionaryAttackLockReset). tpm-fido
// never sets it (machine-wide); doctor says how.
func lockoutCheck(st tpmstore.DAStatus, pin pinKnowledge, why string) check {
	const what = "lockout"
	if !st.GuessingUnlimited() {
		return check{checkOK, what, "the TPM's lockout password is set, so its dictionary-attack protection limits guesses of the PIN that verify-required keys need", ""}
	}
	const risk = "the TPM's lockout password is empty, so anyone who can open the TPM can reset its dictionary-attack counter (TPM2_DictionaryAttackLockReset) and, with a copy of the state directory, guess the PIN of a verify-required key at the TPM's speed"
	fix := tpmstore.SetLockoutAuthCommand + "   # choose a long random password and keep it safe (a password manager)\n" +
		"(machine-wide; tpm-fido never sets it; ending a TPM lockout and changing the dictionary-attack\n" +
		"policy then need it: tpm2_dictionarylockout ... -p " + tpmstore.LockoutPasswordPlaceholder + ", and a wrong one blocks its use for " + lockoutRecovery(st) + ")"
	if !st.AllowsCTAPRetries() && st.CanEverTry() {
		fix += "\nif you also relax the dictionary-attack policy (tpm-da above), do that first: its command needs no -p until a lockout password is set"
	}
	switch pin {
	case pinIsSet:
		return check{checkWarn, what, "a FIDO PIN is set and " + risk, fix}
	case pinUnknown:
		return check{checkWarn, what, risk + " (" + why + ", so doctor cannot tell whether a FIDO PIN is set; without one this does not matter)", fix}
	}
	return check{checkOK, what, "the TPM's lockout password is empty; that matters once a FIDO PIN is set (then set one: " + tpmstore.SetLockoutAuthCommand + ")", ""}
}

// lockoutRecovery is the TPM's lockout recovery time, for messages.
func lockoutRecovery(st tpmstore.DAStatus) string {
	if st.LockoutRecovery <= 0 {
		return "the rest of this boot (lockout recovery time 0)"
	}
	return st.LockoutRecovery.String()
}

// daCheck reports the TPM's dictionary-attack policy and state: whether
// a FIDO PIN gets CTAP's 8 tries, when the next try is possible, and the
// command that relaxes a policy too strict for CTAP (tpm-fido never
// changes it itself: it is machine-wide).
func daCheck(st tpmstore.DAStatus) check {
	const what = "tpm-da"
	detail := "dictionary-attack policy: " + st.String()
	relax := st.RelaxCommand() + "\n(machine-wide; tpm-fido setup never changes it; "
	if st.LockoutAuthSet {
		relax += tpmstore.LockoutPasswordPlaceholder + " is the TPM's lockout password: a wrong one blocks its use for " + lockoutRecovery(st) + ")"
	} else {
		relax += "no password while the TPM's lockout password is empty; once one is set, add -p " + tpmstore.LockoutPasswordPlaceholder + ")"
	}
	switch {
	case !st.CanEverTry():
		return check{checkFail, what, detail + fmt.Sprintf("; the TPM locks out after %d failure(s), so tpm-fido can never try a FIDO PIN", st.MaxTries), relax}
	case !st.SafeToTry():
		return check{checkWarn, what, detail + "; next FIDO PIN try " + nextTry(st), relax}
	case !st.AllowsCTAPRetries():
		return check{checkWarn, what, detail + fmt.Sprintf("; tpm-fido never makes the PIN try that could lock the TPM, so a FIDO PIN gets %d tries per %s instead of CTAP's %d",
			st.MaxTries-1, st.RecoveryTime, tpmstore.CTAPPINFailures), relax}
	}
	return check{checkOK, what, detail + fmt.Sprintf("; a FIDO PIN gets CTAP's %d tries", tpmstore.CTAPPINFailures), ""}
}

func (e doctorEnv) checkStateDir() check {
	const what = "state"
	sf := storeFlags{tpm: e.tpm, stateDir: e.stateDir}
	st, err := tpmstore.CheckStateDeep(e.stateDir)
	var bad *tpmstore.StateError
	if errors.As(err, &bad) {
		fix := "restore " + st.Path + " from a backup if you have one, or start afresh (every credential made with this key is lost):\n" + sf.resetCommand() + "   # asks before it removes anything"
		if errors.Is(err, tpmstore.ErrStateUnreadable) {
			fix = "if it is yours: sudo chown -R \"$USER\": " + e.stateDir + " && chmod 700 " + e.stateDir + "\nor start afresh (every credential made with this key is lost): " + sf.resetCommand()
		}
		return check{checkFail, what, bad.Path + " " + bad.Problem, fix}
	}
	fi, err := os.Stat(e.stateDir)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return check{checkOK, what, e.stateDir + " does not exist yet; the daemon creates it (0700) on first start", ""}
	case err != nil:
		return check{checkFail, what, err.Error(), "check the permissions of " + filepath.Dir(e.stateDir)}
	case !fi.IsDir():
		return check{checkFail, what, e.stateDir + " is not a directory", "move it away: mv " + e.stateDir + " " + e.stateDir + ".bak"}
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok && int(st.Uid) != os.Getuid() {
		return check{checkFail, what, fmt.Sprintf("%s belongs to uid %d, not to you (uid %d)", e.stateDir, st.Uid, os.Getuid()),
			fmt.Sprintf("sudo chown -R %d: %s", os.Getuid(), e.stateDir)}
	}
	if fi.Mode().Perm() != 0o700 {
		return check{checkFail, what, fmt.Sprintf("%s has mode %04o; it must be 0700", e.stateDir, fi.Mode().Perm()),
			"chmod 700 " + e.stateDir}
	}
	if st.Warning != "" {
		return check{checkWarn, what, st.Path + ": " + st.Warning,
			"it still works; keep a backup of " + e.stateDir + " and check the disk (e.g. smartctl -a)"}
	}
	if st.InUse {
		return check{checkOK, what, e.stateDir + " (0700, yours; the running daemon holds it)", ""}
	}
	if st.Exists {
		if c, bad := e.checkStoreOpens(sf); bad {
			return c
		}
		return check{checkOK, what, e.stateDir + " (0700, yours; " + filepath.Base(tpmstore.StatePath(e.stateDir)) + " is intact)", ""}
	}
	return check{checkOK, what, e.stateDir + " (0700, yours)", ""}
}

// checkResidents reports how much of the resident-credential capacity
// the state uses. It reads the state without the TPM, so only while the
// daemon does not hold it.
func (e doctorEnv) checkResidents() check {
	const what = "passkeys"
	u, err := tpmstore.ReadUsage(e.stateDir)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return check{checkOK, what, fmt.Sprintf("none yet (capacity %d resident credentials)", tpmstore.DefaultMaxResidents), ""}
	case errors.Is(err, tpmstore.ErrStateInUse):
		return check{checkOK, what, "the running daemon holds the state, so it cannot be counted here; `fido2-token -I DEVICE` shows the remaining resident credentials", ""}
	case err != nil:
		return check{checkFail, what, err.Error(), "keep a copy of " + e.stateDir + " before changing anything; `tpm-fido serve` says what it cannot read"}
	}
	rpWord := "relying parties"
	if u.RPs == 1 {
		rpWord = "relying party"
	}
	detail := fmt.Sprintf("%d of %d resident credentials used, %d %s", u.Residents, u.Max, u.RPs, rpWord)
	if u.Older {
		detail += " (older state layout; the daemon upgrades it when it next starts)"
	}
	fix := "delete unused ones (tpm-fido list, tpm-fido delete ID), or raise the capacity: tpm-fido serve --max-residents N"
	switch {
	case u.Residents >= u.Max:
		return check{checkWarn, what, detail + ": full, new passkeys are refused", fix}
	case u.Residents*10 >= u.Max*9:
		return check{checkWarn, what, detail + ": nearly full", fix}
	}
	return check{checkOK, what, detail, ""}
}

// checkStoreOpens opens the key store with the TPM, which finds what only
// the TPM can tell: key blobs that are damaged or belong to another TPM.
// Other failures (no TPM, a busy one) are the tpm check's to report.
func (e doctorEnv) checkStoreOpens(sf storeFlags) (check, bool) {
	const what = "state"
	done := make(chan error, 1)
	go func() {
		_, closeAll, err := sf.openExamined()
		if err == nil {
			closeAll()
		}
		done <- err
	}()
	timeout := e.tpmTimeout
	if timeout <= 0 {
		timeout = 5 * time.Second
	}
	var err error
	select {
	case err = <-done:
	case <-time.After(timeout):
		return check{}, false
	}
	var detail string
	if err != nil {
		detail, _, _ = strings.Cut(err.Error(), "\n") // without the way out sf.open adds
	}
	switch {
	case errors.Is(err, tpmstore.ErrForeignTPM):
		return check{checkFail, what, detail, "if the state belongs to another machine, move " + e.stateDir + " away; to start afresh here (every credential in it is lost): " + sf.resetCommand()}, true
	case errors.Is(err, tpmstore.ErrStaleState):
		return check{checkFail, what, detail, sf.resetCommand() + "   # asks before it removes anything"}, true
	case errors.Is(err, tpmstore.ErrCorruptState):
		return check{checkFail, what, tpmstore.StatePath(e.stateDir) + ": " + detail,
			"restore it from a backup if you have one, or start afresh (every credential made with this key is lost):\n" + sf.resetCommand() + "   # asks before it removes anything"}, true
	}
	return check{}, false
}

// checkPresence chooses and tries the prompt as serve does at start-up
// (presence.Choose): serve refuses to start without one.
func (e doctorEnv) checkPresence() check {
	const what = "prompt"
	name := e.promptName
	if name == "" {
		name = presence.BackendAuto
	}
	c, err := presence.Choose(name, e.presence)
	if err != nil {
		return check{checkFail, what, "--presence " + name + " cannot ask for user presence, so the daemon would not start: " + err.Error(),
			"in a desktop session: a notification server, or a graphical pinentry (sudo apt-get install pinentry-gnome3)\n" +
				"with the session's environment in the user manager: dbus-update-activation-environment --systemd --all"}
	}
	detail := fmt.Sprintf("--presence %s uses %s (%s)", name, c.Backend, c.Detail)
	if c.Fixed {
		return check{checkWarn, what, detail + ": nobody is asked", "for tests only, never for real keys: --presence auto"}
	}
	if c.Terminal {
		return check{checkWarn, what, detail + ", which needs this terminal",
			"a daemon started by systemd has no terminal and would not start: use a desktop session's\nnotifications or a graphical pinentry, or run tpm-fido serve in this terminal"}
	}
	return check{checkOK, what, detail, ""}
}

func (e doctorEnv) checkDevice() check {
	const what = "device"
	entries, _ := os.ReadDir(e.hidraw)
	for _, ent := range entries {
		uevent, err := os.ReadFile(filepath.Join(e.hidraw, ent.Name(), "device", "uevent"))
		if err != nil || !hasHIDName(uevent, udev.HIDName) {
			continue
		}
		node := filepath.Join(e.dev, ent.Name())
		devnum, _ := os.ReadFile(filepath.Join(e.hidraw, ent.Name(), "dev"))
		db, err := os.ReadFile(filepath.Join(e.udevData, "c"+strings.TrimSpace(string(devnum))))
		if err != nil {
			return check{checkWarn, what, node + " is our key, but udev has no record of it",
				"is systemd-udevd running? sudo udevadm trigger --subsystem-match=hidraw"}
		}
		if !udevTagged(db, "uaccess") {
			return check{checkFail, what, node + " is our key but is not tagged uaccess, so browsers cannot open it",
				"sudo tpm-fido setup && sudo udevadm control --reload && sudo udevadm trigger --subsystem-match=hidraw"}
		}
		if err := unix.Access(node, unix.R_OK|unix.W_OK); err != nil {
			return check{checkWarn, what, node + " is tagged uaccess but you cannot open it",
				"uaccess grants the user of the active local session: log in on the seat (not over ssh), or check `loginctl`"}
		}
		return check{checkOK, what, node + " is our key, tagged uaccess, and you can open it", ""}
	}
	return check{checkWarn, what, "no virtual key in " + e.hidraw + " (is the daemon running?)",
		"systemctl --user start tpm-fido; journalctl --user -u tpm-fido"}
}

// hasHIDName reports whether a hid device's uevent names our device.
func hasHIDName(uevent []byte, prefix string) bool {
	for _, l := range strings.Split(string(uevent), "\n") {
		if v, ok := strings.CutPrefix(l, "HID_NAME="); ok && strings.HasPrefix(v, prefix) {
			return true
		}
	}
	return false
}

// udevTagged reports whether a udev database record carries tag.
func udevTagged(db []byte, tag string) bool {
	for _, l := range strings.Split(string(db), "\n") {
		if l == "G:"+tag || l == "Q:"+tag {
			return true
		}
	}
	return false
}
