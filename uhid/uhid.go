// Package uhid creates the virtual FIDO HID device through Linux's
// /dev/uhid and moves 64-byte reports between it and the CTAPHID server.
// It is the only package that knows struct uhid_event.
package uhid

import (
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"sync"

	"golang.org/x/sys/unix"
)

// Path is the uhid character device.
const Path = "/dev/uhid"

// ReportSize is the size of the device's input and output reports, as
// ReportDescriptor declares them (Report Count 64 of 8 bits): CTAPHID's
// packet size.
const ReportSize = 64

// Errors from Open. Both name the fix in their message.
var (
	// ErrNotPresent means /dev/uhid does not exist: the module is not loaded.
	ErrNotPresent = errors.New("/dev/uhid not found: load the kernel module with `sudo modprobe uhid` (`tpm-fido setup` makes it load at boot)")
	// ErrPermission means the user may not open /dev/uhid.
	ErrPermission = errors.New("permission denied on /dev/uhid: users get no right on it (it would let their programs create a keyboard); run the daemon with --transport relay, the default, which asks the tpm-fido-relay service for the device (sudo tpm-fido setup installs it)")
)

// Device is a uhid HID device. It implements ctaphid.ReportDevice.
type Device struct {
	f   *os.File
	log *slog.Logger

	wmu  sync.Mutex
	wbuf []byte

	rbuf []byte
	once sync.Once
}

// Open creates the device with the given identity (zero value:
// DefaultIdentity). log may be nil.
func Open(id Identity, log *slog.Logger) (*Device, error) {
	return OpenPath(Path, id, log)
}

// OpenPath is Open on another path (tests).
func OpenPath(path string, id Identity, log *slog.Logger) (*Device, error) {
	if id == (Identity{}) {
		id = DefaultIdentity
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	create, err := encodeCreate2(id, ReportDescriptor)
	if err != nil {
		return nil, err
	}
	fd, err := unix.Open(path, unix.O_RDWR|unix.O_CLOEXEC|unix.O_NONBLOCK, 0)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return nil, fmt.Errorf("uhid: %w", ErrNotPresent)
	case errors.Is(err, fs.ErrPermission):
		return nil, fmt.Errorf("uhid: %w", ErrPermission)
	case err != nil:
		return nil, fmt.Errorf("uhid: opening %s: %w", path, err)
	}
	// os.NewFile on a non-blocking fd registers it with the runtime
	// poller, so Close unblocks a pending Read.
	f := os.NewFile(uintptr(fd), path)
	d := &Device{f: f, log: log, wbuf: make([]byte, eventSize), rbuf: make([]byte, eventSize)}
	if _, err := f.Write(create); err != nil {
		f.Close()
		return nil, fmt.Errorf("uhid: creating device: %w", err)
	}
	log.Info("uhid device created", "name", id.Name, "vendor", fmt.Sprintf("%04x", id.Vendor), "product", fmt.Sprintf("%04x", id.Product), "uniq", id.Uniq)
	return d, nil
}

// ReadReport returns the next output report the host wrote, handling
// the other events (START, STOP, OPEN, CLOSE) on the way.
func (d *Device) ReadReport(p []byte) (int, error) {
	for {
		n, err := d.f.Read(d.rbuf)
		if err != nil {
			return 0, fmt.Errorf("uhid: read: %w", err)
		}
		ev, err := decodeEvent(d.rbuf[:n])
		if err != nil {
			d.log.Warn("uhid: bad event ignored", "err", err)
			continue
		}
		switch ev.typ {
		case evOutput:
			return copy(p, ev.report), nil
		case evStart:
			d.log.Debug("uhid: start")
		case evStop:
			d.log.Debug("uhid: stop")
		case evOpen:
			d.log.Debug("uhid: opened by a client")
		case evClose:
			d.log.Debug("uhid: closed by a client")
		default:
			d.log.Debug("uhid: event ignored", "type", ev.typ)
		}
	}
}

// WriteReport sends one 64-byte input report to the host.
func (d *Device) WriteReport(p []byte) error {
	if len(p) > ReportSize {
		return fmt.Errorf("uhid: report of %d bytes, max %d", len(p), ReportSize)
	}
	d.wmu.Lock()
	defer d.wmu.Unlock()
	ev := encodeInput2(d.wbuf, p)
	if _, err := d.f.Write(ev); err != nil {
		return fmt.Errorf("uhid: write: %w", err)
	}
	return nil
}

// Close destroys the device and closes /dev/uhid; a pending ReadReport
// returns an error wrapping os.ErrClosed.
func (d *Device) Close() error {
	var err error
	d.once.Do(func() {
		d.wmu.Lock()
		_, werr := d.f.Write(encodeDestroy())
		d.wmu.Unlock()
		cerr := d.f.Close()
		if werr != nil {
			err = fmt.Errorf("uhid: destroy: %w", werr)
		} else if cerr != nil {
			err = fmt.Errorf("uhid: close: %w", cerr)
		}
	})
	return err
}
