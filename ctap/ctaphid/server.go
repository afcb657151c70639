package ctaphid

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tpm-fido/tpm-fido/ctap"
)

// Defaults for Config.
const (
	DefaultKeepaliveInterval   = 75 * time.Millisecond
	DefaultContinuationTimeout = 500 * time.Millisecond
	maxLockSeconds             = 10
	shutdownGrace              = 5 * time.Second
)

// Config tunes a Server. The zero value is usable.
type Config struct {
	// Logger receives diagnostics; payloads are logged only at debug level
	// and only as sizes. Nil discards.
	Logger *slog.Logger
	// KeepaliveInterval is the period of KEEPALIVE frames while a MSG or
	// CBOR request is outstanding. It must stay below 100 ms (CTAP 2.1
	// §11.2.9.2.1). Zero means DefaultKeepaliveInterval.
	KeepaliveInterval time.Duration
	// ContinuationTimeout is how long a partial message may wait for its
	// next continuation packet before ERR_MSG_TIMEOUT. Zero means
	// DefaultContinuationTimeout.
	ContinuationTimeout time.Duration
	// Version is the device version (major, minor, build) in INIT
	// responses.
	Version [3]byte
	// Wink is called for CTAPHID_WINK; nil does nothing visible.
	Wink func()
}

// Server speaks CTAPHID on one ReportDevice and hands MSG and CBOR
// requests to a Handler, one at a time.
//
// Channel ids come from a counter over 1..0xFFFFFFFE, so allocation never
// runs out and the server keeps no per-channel table: a channel is
// "allocated" when the counter has passed it (after the first wrap-around
// every id is). All protocol state lives in the goroutine running Serve.
//
// The handler is never called concurrently: after CANCEL or an INIT that
// aborts a request, other requests get ERR_CHANNEL_BUSY until the
// cancelled handler has returned (handlers must honour ctx promptly).
// Timers run only while a message is partial, a request is outstanding
// or a LOCK is held, so an idle server causes no wake-ups.
type Server struct {
	dev ReportDevice
	h   Handler
	cfg Config
	log *slog.Logger

	// Protocol state, owned by the Serve goroutine.
	nextCID uint32 // next channel id to hand out
	wrapped bool   // the counter has wrapped: every id counts as allocated

	asm     *assembly // message being reassembled, or nil
	asmTime *time.Timer
	req     *request // outstanding MSG/CBOR request, or nil
	reqTick *time.Ticker

	lockCID   uint32 // channel holding CTAPHID_LOCK, 0 when unlocked
	lockTimer *time.Timer

	results chan result
	done    chan struct{}
	wg      sync.WaitGroup
	gen     uint64
}

type assembly struct {
	cid  uint32
	cmd  byte
	bcnt int
	seq  byte
	buf  []byte
}

type request struct {
	gen       uint64
	cid       uint32
	cmd       byte
	cancel    context.CancelFunc
	cancelled bool // CTAPHID_CANCEL received: answer KEEPALIVE_CANCEL
	aborted   bool // INIT resynced the channel: send no answer
	status    atomic.Uint32
}

type result struct {
	gen  uint64
	resp []byte
	err  error
}

// NewServer returns a server for dev and h. Serve takes ownership of dev.
func NewServer(dev ReportDevice, h Handler, cfg Config) *Server {
	if cfg.KeepaliveInterval <= 0 {
		cfg.KeepaliveInterval = DefaultKeepaliveInterval
	}
	if cfg.ContinuationTimeout <= 0 {
		cfg.ContinuationTimeout = DefaultContinuationTimeout
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Server{
		dev:     dev,
		h:       h,
		cfg:     cfg,
		log:     log,
		nextCID: 1,
		results: make(chan result),
		done:    make(chan struct{}),
	}
}

// Serve runs the protocol until ctx is cancelled or the device fails. It
// closes the device before returning, cancels an outstanding request and
// waits (up to five seconds) for its handler to return. It returns nil
// after a cancelled ctx or a closed device, and the device's error
// otherwise.
func (s *Server) Serve(ctx context.Context) error {
	reports := make(chan []byte)
	readErr := make(chan error, 1)
	go func() {
		for {
			buf := make([]byte, ReportSize+1)
			n, err := s.dev.ReadReport(buf)
			if err != nil {
				readErr <- err
				return
			}
			select {
			case reports <- buf[:n]:
			case <-s.done:
				return
			}
		}
	}()
	defer s.shutdown()
	// Closing the device also unblocks a write stuck on a host that
	// stopped reading.
	stop := context.AfterFunc(ctx, func() { s.dev.Close() })
	defer stop()

	for {
		var asmC, lockC <-chan time.Time
		var tickC <-chan time.Time
		if s.asmTime != nil {
			asmC = s.asmTime.C
		}
		if s.lockTimer != nil {
			lockC = s.lockTimer.C
		}
		if s.reqTick != nil {
			tickC = s.reqTick.C
		}
		select {
		case <-ctx.Done():
			return nil
		case err := <-readErr:
			if errors.Is(err, io.EOF) || isClosed(err) {
				return nil
			}
			return fmt.Errorf("ctaphid: reading report: %w", err)
		case p := <-reports:
			if err := s.handleReport(p); err != nil {
				return err
			}
		case r := <-s.results:
			if err := s.handleResult(r); err != nil {
				return err
			}
		case <-tickC:
			if err := s.sendKeepalive(); err != nil {
				return err
			}
		case <-asmC:
			if err := s.continuationTimeout(); err != nil {
				return err
			}
		case <-lockC:
			s.unlock()
		}
	}
}

func (s *Server) shutdown() {
	close(s.done)
	if s.req != nil {
		s.req.cancel()
	}
	s.dropAssembly()
	s.unlock()
	s.stopKeepalive()
	if err := s.dev.Close(); err != nil {
		s.log.Debug("ctaphid: closing device", "err", err)
	}
	// A handler that ignores its cancelled context must not keep the
	// daemon from exiting.
	waited := make(chan struct{})
	go func() { s.wg.Wait(); close(waited) }()
	select {
	case <-waited:
	case <-time.After(shutdownGrace):
		s.log.Warn("ctaphid: handler still running at shutdown; not waiting for it")
	}
}

// handleReport is §11.2.4's packet dispatch. It returns an error only
// when the device cannot be written.
func (s *Server) handleReport(p []byte) error {
	pk, ok := parsePacket(p)
	if !ok {
		s.log.Debug("ctaphid: short report ignored", "len", len(p))
		return nil
	}
	if pk.cid == 0 {
		return s.sendError(pk.cid, ErrInvalidChannel)
	}
	if !pk.init {
		return s.handleContinuation(pk)
	}
	switch pk.cmd {
	case CmdInit:
		return s.handleInit(pk)
	case CmdCancel:
		s.handleCancel(pk)
		return nil
	}
	if !s.allocated(pk.cid) {
		return s.sendError(pk.cid, ErrInvalidChannel)
	}
	if pk.bcnt > MaxMessageSize {
		if s.asm != nil && s.asm.cid == pk.cid {
			s.dropAssembly()
		}
		return s.sendError(pk.cid, ErrInvalidLen)
	}
	// One transaction at a time (§11.2.4): anyone else is told to wait.
	if s.asm != nil {
		if s.asm.cid == pk.cid {
			// A new request before the old one was complete.
			s.dropAssembly()
			return s.sendError(pk.cid, ErrInvalidSeq)
		}
		return s.sendError(pk.cid, ErrChannelBusy)
	}
	if s.req != nil || (s.lockCID != 0 && s.lockCID != pk.cid) {
		return s.sendError(pk.cid, ErrChannelBusy)
	}
	a := &assembly{cid: pk.cid, cmd: pk.cmd, bcnt: pk.bcnt, buf: make([]byte, 0, pk.bcnt)}
	a.buf = append(a.buf, pk.data[:min(pk.bcnt, initDataSize)]...)
	if len(a.buf) == a.bcnt {
		return s.dispatch(a)
	}
	s.asm = a
	s.asmTime = time.NewTimer(s.cfg.ContinuationTimeout)
	return nil
}

func (s *Server) handleContinuation(pk packet) error {
	if s.asm == nil {
		s.log.Debug("ctaphid: stray continuation packet ignored", "cid", pk.cid)
		return nil
	}
	if s.asm.cid != pk.cid {
		if !s.allocated(pk.cid) {
			return s.sendError(pk.cid, ErrInvalidChannel)
		}
		// The rest of a message whose init packet was already refused
		// with CHANNEL_BUSY: one refusal per message, or a client that
		// retries after the first would read the others as answers.
		s.log.Debug("ctaphid: continuation of a refused message ignored", "cid", pk.cid)
		return nil
	}
	if pk.seq != s.asm.seq {
		s.dropAssembly()
		return s.sendError(pk.cid, ErrInvalidSeq)
	}
	a := s.asm
	a.seq++
	a.buf = append(a.buf, pk.data[:min(a.bcnt-len(a.buf), contDataSize)]...)
	if len(a.buf) < a.bcnt {
		s.asmTime.Reset(s.cfg.ContinuationTimeout)
		return nil
	}
	s.dropAssembly()
	return s.dispatch(a)
}

func (s *Server) continuationTimeout() error {
	if s.asm == nil {
		return nil
	}
	cid := s.asm.cid
	s.log.Debug("ctaphid: continuation timeout", "cid", cid)
	s.dropAssembly()
	return s.sendError(cid, ErrMsgTimeout)
}

func (s *Server) dropAssembly() {
	s.asm = nil
	if s.asmTime != nil {
		s.asmTime.Stop()
		s.asmTime = nil
	}
}

// handleInit is §11.2.9.1.3: on the broadcast channel it allocates a
// channel; on an allocated channel it aborts that channel's transaction
// and answers with the same id.
func (s *Server) handleInit(pk packet) error {
	if pk.cid != BroadcastCID && !s.allocated(pk.cid) {
		return s.sendError(pk.cid, ErrInvalidChannel)
	}
	if pk.bcnt != 8 {
		return s.sendError(pk.cid, ErrInvalidLen)
	}
	newCID := pk.cid
	if pk.cid == BroadcastCID {
		newCID = s.allocate()
	} else {
		s.abortChannel(pk.cid)
	}
	resp := make([]byte, 17)
	copy(resp[0:8], pk.data[:8])
	binary.BigEndian.PutUint32(resp[8:12], newCID)
	resp[12] = ProtocolVersion
	copy(resp[13:16], s.cfg.Version[:])
	resp[16] = CapWink | CapCBOR
	return s.writeMessage(pk.cid, CmdInit, resp)
}

// abortChannel forgets cid's partial message and outstanding request.
func (s *Server) abortChannel(cid uint32) {
	if s.asm != nil && s.asm.cid == cid {
		s.dropAssembly()
	}
	if s.req != nil && s.req.cid == cid && !s.req.aborted {
		s.req.aborted = true
		s.req.cancel()
		s.stopKeepalive()
	}
}

// handleCancel is §11.2.9.1.5: cancel the channel's outstanding request;
// CANCEL itself gets no response.
func (s *Server) handleCancel(pk packet) {
	if s.asm != nil && s.asm.cid == pk.cid {
		s.dropAssembly()
	}
	if s.req != nil && s.req.cid == pk.cid && !s.req.aborted && !s.req.cancelled {
		s.log.Debug("ctaphid: request cancelled by client", "cid", pk.cid)
		s.req.cancelled = true
		s.req.cancel()
	}
}

func (s *Server) allocate() uint32 {
	cid := s.nextCID
	s.nextCID++
	if s.nextCID == BroadcastCID {
		s.nextCID = 1
		s.wrapped = true
	}
	return cid
}

func (s *Server) allocated(cid uint32) bool {
	if cid == 0 || cid == BroadcastCID {
		return false
	}
	return s.wrapped || cid < s.nextCID
}

// dispatch handles a complete message.
func (s *Server) dispatch(a *assembly) error {
	switch a.cmd {
	case CmdPing:
		return s.writeMessage(a.cid, CmdPing, a.buf)
	case CmdWink:
		if a.bcnt != 0 {
			return s.sendError(a.cid, ErrInvalidLen)
		}
		if s.cfg.Wink != nil {
			s.cfg.Wink()
		}
		return s.writeMessage(a.cid, CmdWink, nil)
	case CmdLock:
		if a.bcnt != 1 {
			return s.sendError(a.cid, ErrInvalidLen)
		}
		secs := a.buf[0]
		if secs > maxLockSeconds {
			return s.sendError(a.cid, ErrInvalidPar)
		}
		s.unlock()
		if secs > 0 {
			s.lockCID = a.cid
			s.lockTimer = time.NewTimer(time.Duration(secs) * time.Second)
		}
		return s.writeMessage(a.cid, CmdLock, nil)
	case CmdCBOR:
		// The CTAP2 command byte is part of the CBOR message's framing:
		// without it there is no request to start (§11.2.9.1.2).
		if a.bcnt == 0 {
			return s.sendError(a.cid, ErrInvalidLen)
		}
		s.startRequest(a)
		return nil
	case CmdMsg:
		s.startRequest(a)
		return nil
	}
	return s.sendError(a.cid, ErrInvalidCmd)
}

func (s *Server) unlock() {
	s.lockCID = 0
	if s.lockTimer != nil {
		s.lockTimer.Stop()
		s.lockTimer = nil
	}
}

func (s *Server) startRequest(a *assembly) {
	s.gen++
	ctx, cancel := context.WithCancel(context.Background())
	r := &request{gen: s.gen, cid: a.cid, cmd: a.cmd, cancel: cancel}
	r.status.Store(uint32(ctap.KeepaliveProcessing))
	ctx = ctap.WithKeepalive(ctx, func(st ctap.KeepaliveStatus) { r.status.Store(uint32(st)) })
	s.req = r
	s.reqTick = time.NewTicker(s.cfg.KeepaliveInterval)
	s.log.Debug("ctaphid: request", "cid", a.cid, "cmd", a.cmd, "len", len(a.buf))
	s.wg.Add(1)
	go func(gen uint64, req ctap.Request) {
		defer s.wg.Done()
		resp, err := s.h.Handle(ctx, req)
		select {
		case s.results <- result{gen: gen, resp: resp, err: err}:
		case <-s.done:
		}
	}(r.gen, ctap.Request{CID: a.cid, Cmd: a.cmd, Payload: a.buf})
}

func (s *Server) stopKeepalive() {
	if s.reqTick != nil {
		s.reqTick.Stop()
		s.reqTick = nil
	}
}

func (s *Server) sendKeepalive() error {
	if s.req == nil || s.req.aborted {
		return nil
	}
	return s.writeMessage(s.req.cid, CmdKeepalive, []byte{byte(s.req.status.Load())})
}

// handleResult sends the outstanding request's answer.
func (s *Server) handleResult(res result) error {
	r := s.req
	if r == nil || r.gen != res.gen {
		return nil
	}
	s.req = nil
	s.stopKeepalive()
	r.cancel()
	switch {
	case r.aborted:
		return nil
	case r.cancelled && r.cmd == CmdCBOR:
		return s.writeMessage(r.cid, CmdCBOR, []byte{byte(ctap.StatusKeepaliveCancel)})
	case res.err != nil:
		var st ctap.Status
		if r.cmd == CmdCBOR && errors.As(res.err, &st) {
			return s.writeMessage(r.cid, CmdCBOR, []byte{byte(st)})
		}
		s.log.Error("ctaphid: handler failed", "cid", r.cid, "cmd", r.cmd, "err", res.err)
		return s.sendError(r.cid, ErrOther)
	case len(res.resp) > MaxMessageSize:
		s.log.Error("ctaphid: handler response too large", "cid", r.cid, "cmd", r.cmd, "len", len(res.resp))
		return s.sendError(r.cid, ErrOther)
	}
	return s.writeMessage(r.cid, r.cmd, res.resp)
}

func (s *Server) sendError(cid uint32, code byte) error {
	s.log.Debug("ctaphid: error frame", "cid", cid, "code", code)
	return s.writeMessage(cid, CmdError, []byte{code})
}

func (s *Server) writeMessage(cid uint32, cmd byte, data []byte) error {
	for _, p := range EncodeMessage(cid, cmd, data) {
		if err := s.dev.WriteReport(p); err != nil {
			if isClosed(err) {
				return nil
			}
			return fmt.Errorf("ctaphid: writing report: %w", err)
		}
	}
	return nil
}

func isClosed(err error) bool {
	return errors.Is(err, net.ErrClosed) || errors.Is(err, os.ErrClosed)
}
