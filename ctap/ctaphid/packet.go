package ctaphid

import "encoding/binary"

// CTAPHID command codes (CTAP 2.1 §11.2.9), without the 0x80 init bit.
const (
	CmdPing      byte = 0x01
	CmdMsg       byte = 0x03
	CmdLock      byte = 0x04
	CmdInit      byte = 0x06
	CmdWink      byte = 0x08
	CmdCBOR      byte = 0x10
	CmdCancel    byte = 0x11
	CmdKeepalive byte = 0x3B
	CmdError     byte = 0x3F
)

// CTAPHID_ERROR codes (CTAP 2.1 §11.2.9.1.6).
const (
	ErrInvalidCmd     byte = 0x01
	ErrInvalidPar     byte = 0x02
	ErrInvalidLen     byte = 0x03
	ErrInvalidSeq     byte = 0x04
	ErrMsgTimeout     byte = 0x05
	ErrChannelBusy    byte = 0x06
	ErrLockRequired   byte = 0x0A
	ErrInvalidChannel byte = 0x0B
	ErrOther          byte = 0x7F
)

// Capability flags in the INIT response (CTAP 2.1 §11.2.9.1.3).
const (
	CapWink byte = 0x01
	CapCBOR byte = 0x04
	CapNMSG byte = 0x08
)

const (
	// BroadcastCID is the channel a client uses to ask for a channel.
	BroadcastCID uint32 = 0xFFFFFFFF
	// MaxMessageSize is the largest message CTAPHID can carry with full
	// speed 64-byte reports: 57 bytes in the init packet plus 128
	// continuation packets of 59 bytes.
	MaxMessageSize = initDataSize + 128*contDataSize

	initDataSize = ReportSize - 7
	contDataSize = ReportSize - 5
	initBit      = 0x80
	// ProtocolVersion is the CTAPHID protocol version in INIT responses.
	ProtocolVersion = 2
)

// packet is one decoded 64-byte report. For an initialization packet
// init is true and cmd and bcnt are set; for a continuation packet seq is.
type packet struct {
	cid  uint32
	init bool
	cmd  byte
	bcnt int
	seq  byte
	data []byte // payload bytes carried by this report (57 or 59, padded)
}

// parsePacket decodes a report. Reports shorter than 64 bytes are taken
// as zero-padded (some transports trim trailing zeros); ok is false when
// the report is too short to hold even a header.
func parsePacket(p []byte) (pk packet, ok bool) {
	if len(p) < 5 {
		return packet{}, false
	}
	var buf [ReportSize]byte
	copy(buf[:], p)
	pk.cid = binary.BigEndian.Uint32(buf[0:4])
	if buf[4]&initBit != 0 {
		pk.init = true
		pk.cmd = buf[4] &^ initBit
		pk.bcnt = int(binary.BigEndian.Uint16(buf[5:7]))
		pk.data = append([]byte(nil), buf[7:]...)
		return pk, true
	}
	pk.seq = buf[4]
	pk.data = append([]byte(nil), buf[5:]...)
	return pk, true
}

// EncodeMessage splits a message into 64-byte reports: an init packet
// then continuation packets with sequence numbers 0, 1, ... It is the
// inverse of the server's reassembly and is used by both sides.
// len(data) must not exceed MaxMessageSize.
func EncodeMessage(cid uint32, cmd byte, data []byte) [][]byte {
	n := 1
	if len(data) > initDataSize {
		n += (len(data) - initDataSize + contDataSize - 1) / contDataSize
	}
	out := make([][]byte, 0, n)
	p := make([]byte, ReportSize)
	binary.BigEndian.PutUint32(p[0:4], cid)
	p[4] = cmd | initBit
	binary.BigEndian.PutUint16(p[5:7], uint16(len(data)))
	off := copy(p[7:], data)
	out = append(out, p)
	for seq := byte(0); off < len(data); seq++ {
		p = make([]byte, ReportSize)
		binary.BigEndian.PutUint32(p[0:4], cid)
		p[4] = seq
		off += copy(p[5:], data[off:])
		out = append(out, p)
	}
	return out
}
