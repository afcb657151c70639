package uhid

import (
	"bytes"
	"encoding/binary"
	"errors"
	"os"
	"testing"
)

func TestCreate2Layout(t *testing.T) {
	ev, err := encodeCreate2(DefaultIdentity, ReportDescriptor)
	if err != nil {
		t.Fatal(err)
	}
	le := binary.LittleEndian
	if len(ev) != 4376 {
		t.Fatalf("event size %d, want 4376", len(ev))
	}
	checks := []struct {
		name      string
		got, want uint32
	}{
		{"type", le.Uint32(ev[0:]), 11},
		{"rd_size", uint32(le.Uint16(ev[260:])), uint32(len(ReportDescriptor))},
		{"bus", uint32(le.Uint16(ev[262:])), 0x03},
		{"vendor", le.Uint32(ev[264:]), DefaultIdentity.Vendor},
		{"product", le.Uint32(ev[268:]), DefaultIdentity.Product},
		{"version", le.Uint32(ev[272:]), DefaultIdentity.Version},
		{"country", le.Uint32(ev[276:]), 0},
	}
	for _, c := range checks {
		if c.got != c.want {
			t.Errorf("%s = %#x, want %#x", c.name, c.got, c.want)
		}
	}
	if got := string(bytes.TrimRight(ev[4:132], "\x00")); got != "tpm-fido" {
		t.Errorf("name %q", got)
	}
	if got := string(bytes.TrimRight(ev[196:260], "\x00")); got != DefaultIdentity.Uniq {
		t.Errorf("uniq %q", got)
	}
	for _, c := range DefaultIdentity.Uniq {
		if c < 0x21 || c > 0x7e {
			t.Errorf("uniq %q has a non-printable byte", DefaultIdentity.Uniq)
		}
	}
	if !bytes.Equal(ev[280:280+len(ReportDescriptor)], ReportDescriptor) {
		t.Error("report descriptor not at offset 280")
	}
	// The descriptor starts with usage page 0xF1D0, usage 1, and has
	// two 64-byte reports.
	if !bytes.HasPrefix(ReportDescriptor, []byte{0x06, 0xD0, 0xF1, 0x09, 0x01}) {
		t.Errorf("descriptor prefix % x", ReportDescriptor[:5])
	}
	if n := bytes.Count(ReportDescriptor, []byte{0x95, 0x40}); n != 2 {
		t.Errorf("%d report counts of 64, want 2", n)
	}
}

func TestCreate2FieldTooLong(t *testing.T) {
	id := DefaultIdentity
	id.Uniq = string(bytes.Repeat([]byte("u"), 64))
	if _, err := encodeCreate2(id, ReportDescriptor); !errors.Is(err, errField) {
		t.Fatalf("got %v, want errField", err)
	}
}

func TestInput2Layout(t *testing.T) {
	report := make([]byte, 64)
	for i := range report {
		report[i] = byte(i + 1)
	}
	buf := make([]byte, eventSize)
	for i := range buf {
		buf[i] = 0xEE // stale bytes must not leak
	}
	ev := encodeInput2(buf, report)
	if len(ev) != 70 {
		t.Fatalf("INPUT2 length %d, want 70", len(ev))
	}
	if typ := binary.LittleEndian.Uint32(ev); typ != 12 {
		t.Errorf("type %d", typ)
	}
	if n := binary.LittleEndian.Uint16(ev[4:]); n != 64 {
		t.Errorf("size %d", n)
	}
	if !bytes.Equal(ev[6:], report) {
		t.Error("report not at offset 6")
	}
}

func outputEvent(data []byte) []byte {
	ev := make([]byte, eventSize)
	binary.LittleEndian.PutUint32(ev, 6)
	copy(ev[4:], data)
	binary.LittleEndian.PutUint16(ev[4100:], uint16(len(data)))
	ev[4102] = 1 // UHID_OUTPUT_REPORT
	return ev
}

func TestDecodeOutput(t *testing.T) {
	report := bytes.Repeat([]byte{0xAB}, 64)
	for _, tc := range []struct {
		name string
		data []byte
	}{
		{"with report id 0", append([]byte{0}, report...)},
		{"without report id", report},
	} {
		e, err := decodeEvent(outputEvent(tc.data))
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if e.typ != evOutput || !bytes.Equal(e.report, report) || e.rtype != 1 {
			t.Errorf("%s: type %d rtype %d report % x", tc.name, e.typ, e.rtype, e.report[:4])
		}
	}
	for _, typ := range []uint32{evStart, evStop, evOpen, evClose} {
		ev := make([]byte, 4)
		binary.LittleEndian.PutUint32(ev, typ)
		if e, err := decodeEvent(ev); err != nil || e.typ != typ {
			t.Errorf("event %d: %v %v", typ, e.typ, err)
		}
	}
	if _, err := decodeEvent([]byte{6, 0}); !errors.Is(err, errShortEvent) {
		t.Errorf("2-byte event: %v", err)
	}
	if _, err := decodeEvent(outputEvent(nil)[:100]); !errors.Is(err, errShortEvent) {
		t.Errorf("truncated OUTPUT: %v", err)
	}
	bad := outputEvent(nil)
	binary.LittleEndian.PutUint16(bad[4100:], 5000)
	if _, err := decodeEvent(bad); err == nil {
		t.Error("OUTPUT with size 5000 accepted")
	}
}

func TestOpenMissing(t *testing.T) {
	_, err := OpenPath(t.TempDir()+"/nope", Identity{}, nil)
	if !errors.Is(err, ErrNotPresent) {
		t.Fatalf("got %v, want ErrNotPresent", err)
	}
	if !bytes.Contains([]byte(err.Error()), []byte("modprobe uhid")) {
		t.Errorf("message %q does not name the fix", err)
	}
}

func TestOpenPermission(t *testing.T) {
	if os.Geteuid() == 0 {
		t.Skip("root ignores file permissions")
	}
	p := t.TempDir() + "/uhid"
	if err := os.WriteFile(p, nil, 0); err != nil {
		t.Fatal(err)
	}
	if _, err := OpenPath(p, Identity{}, nil); !errors.Is(err, ErrPermission) {
		t.Fatalf("got %v, want ErrPermission", err)
	}
}

// TestDevice creates a real device when /dev/uhid is usable and checks
// that Close unblocks a pending read.
func TestDevice(t *testing.T) {
	d, err := Open(Identity{}, nil)
	if errors.Is(err, ErrNotPresent) || errors.Is(err, ErrPermission) {
		t.Skipf("no usable /dev/uhid: %v", err)
	}
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		_, err := d.ReadReport(make([]byte, 64))
		done <- err
	}()
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	if err := <-done; !errors.Is(err, os.ErrClosed) {
		t.Errorf("pending read after Close: %v", err)
	}
}
