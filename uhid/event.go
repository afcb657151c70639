package uhid

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// Event types of struct uhid_event (linux/uhid.h).
const (
	evDestroy = 1
	evStart   = 2
	evStop    = 3
	evOpen    = 4
	evClose   = 5
	evOutput  = 6
	evCreate2 = 11
	evInput2  = 12
)

// Layout of struct uhid_event.
const (
	eventSize = 4376
	dataMax   = 4096

	create2Name    = 4
	create2Phys    = 132
	create2Uniq    = 196
	create2RDSize  = 260
	create2Bus     = 262
	create2Vendor  = 264
	create2Product = 268
	create2Version = 272
	create2Country = 276
	create2RDData  = 280

	input2Size = 4
	input2Data = 6

	outputData  = 4
	outputSize  = 4100
	outputRType = 4102
)

// busUSB is BUS_USB from linux/input.h. libfido2 only lists USB devices.
const busUSB = 0x03

// ReportDescriptor is the FIDO HID report descriptor: usage page 0xF1D0,
// usage 0x01 (CTAPHID), one 64-byte input and one 64-byte output report
// without report ids.
var ReportDescriptor = []byte{
	0x06, 0xD0, 0xF1, // Usage Page (FIDO Alliance, 0xF1D0)
	0x09, 0x01, // Usage (CTAPHID)
	0xA1, 0x01, // Collection (Application)
	0x09, 0x20, //   Usage (Input Report Data)
	0x15, 0x00, //   Logical Minimum (0)
	0x26, 0xFF, 0x00, //   Logical Maximum (255)
	0x75, 0x08, //   Report Size (8)
	0x95, ReportSize, //   Report Count (64)
	0x81, 0x02, //   Input (Data, Var, Abs)
	0x09, 0x21, //   Usage (Output Report Data)
	0x15, 0x00, //   Logical Minimum (0)
	0x26, 0xFF, 0x00, //   Logical Maximum (255)
	0x75, 0x08, //   Report Size (8)
	0x95, ReportSize, //   Report Count (64)
	0x91, 0x02, //   Output (Data, Var, Abs)
	0xC0, // End Collection
}

// Identity is what the kernel and udev see of the device.
type Identity struct {
	Name    string // HID name, at most 127 bytes
	Phys    string // at most 63 bytes
	Uniq    string // printable and stable (udev rules match on it), at most 63 bytes
	Vendor  uint32
	Product uint32
	Version uint32
}

// DefaultIdentity is the identity tpm-fido's device uses. The ids sit in
// the range pid.codes sets aside for testing; they are fixed so udev
// rules can match them.
var DefaultIdentity = Identity{
	Name:    "tpm-fido",
	Phys:    "tpm-fido",
	Uniq:    "tpm-fido-0",
	Vendor:  0x1209,
	Product: 0x000A,
	Version: 1,
}

var errField = errors.New("uhid: field too long")

func putString(dst []byte, s string) error {
	if len(s) >= len(dst) {
		return fmt.Errorf("%w: %q (max %d bytes)", errField, s, len(dst)-1)
	}
	copy(dst, s)
	return nil
}

// encodeCreate2 builds a UHID_CREATE2 event.
func encodeCreate2(id Identity, rd []byte) ([]byte, error) {
	if len(rd) > dataMax {
		return nil, fmt.Errorf("%w: report descriptor of %d bytes", errField, len(rd))
	}
	ev := make([]byte, eventSize)
	le := binary.LittleEndian
	le.PutUint32(ev[0:], evCreate2)
	if err := putString(ev[create2Name:create2Name+128], id.Name); err != nil {
		return nil, err
	}
	if err := putString(ev[create2Phys:create2Phys+64], id.Phys); err != nil {
		return nil, err
	}
	if err := putString(ev[create2Uniq:create2Uniq+64], id.Uniq); err != nil {
		return nil, err
	}
	le.PutUint16(ev[create2RDSize:], uint16(len(rd)))
	le.PutUint16(ev[create2Bus:], busUSB)
	le.PutUint32(ev[create2Vendor:], id.Vendor)
	le.PutUint32(ev[create2Product:], id.Product)
	le.PutUint32(ev[create2Version:], id.Version)
	le.PutUint32(ev[create2Country:], 0)
	copy(ev[create2RDData:], rd)
	return ev, nil
}

// encodeInput2 builds a UHID_INPUT2 event carrying one input report.
func encodeInput2(ev, report []byte) []byte {
	n := input2Data + len(report)
	ev = ev[:n]
	clear(ev)
	binary.LittleEndian.PutUint32(ev[0:], evInput2)
	binary.LittleEndian.PutUint16(ev[input2Size:], uint16(len(report)))
	copy(ev[input2Data:], report)
	return ev
}

func encodeDestroy() []byte {
	ev := make([]byte, 4)
	binary.LittleEndian.PutUint32(ev, evDestroy)
	return ev
}

// event is a decoded event read from /dev/uhid.
type event struct {
	typ    uint32
	report []byte // OUTPUT: the report, without a leading report id 0
	rtype  byte
}

var errShortEvent = errors.New("uhid: short event")

// decodeEvent parses an event the kernel wrote.
func decodeEvent(b []byte) (event, error) {
	if len(b) < 4 {
		return event{}, fmt.Errorf("%w: %d bytes", errShortEvent, len(b))
	}
	e := event{typ: binary.LittleEndian.Uint32(b)}
	if e.typ != evOutput {
		return e, nil
	}
	if len(b) < outputRType+1 {
		return event{}, fmt.Errorf("%w: OUTPUT event of %d bytes", errShortEvent, len(b))
	}
	size := int(binary.LittleEndian.Uint16(b[outputSize:]))
	if size > dataMax {
		return event{}, fmt.Errorf("uhid: OUTPUT size %d out of range", size)
	}
	data := b[outputData : outputData+size]
	// Without numbered reports the kernel passes the report-id byte 0
	// hidraw writers prepend.
	if size == ReportSize+1 && data[0] == 0 {
		data = data[1:]
	}
	e.report = data
	e.rtype = b[outputRType]
	return e, nil
}
