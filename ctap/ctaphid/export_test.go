package ctaphid

// NextCID exposes the channel counter to the external tests. Call it
// only when Serve is not running.
func (s *Server) NextCID() (next uint32, wrapped bool) { return s.nextCID, s.wrapped }

// SetNextCID moves the channel counter, to test wrap-around.
func (s *Server) SetNextCID(next uint32) { s.nextCID = next }
