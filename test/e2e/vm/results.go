package vm

import (
	"bufio"
	"bytes"
	"encoding/base64"
	"strings"
)

// Result is one guest scenario's marker: E2E-RESULT NAME PASS|FAIL|SKIP DETAIL.
type Result struct {
	Name   string
	Pass   bool
	Skip   bool // SKIP: the scenario could not run, for the reason in Detail
	Detail string
	Log    []string // the E2E-LOG lines the guest printed for it
}

// Report is what a boot printed on its console.
type Report struct {
	Results map[string]*Result
	Order   []string
	Files   map[string][]byte // E2E-FILE NAME BASE64
}

// Parse reads the markers from a serial console log. Markers may follow
// kernel messages on the same line; carriage returns are ignored.
func Parse(log []byte) *Report {
	r := &Report{Results: map[string]*Result{}, Files: map[string][]byte{}}
	sc := bufio.NewScanner(bytes.NewReader(log))
	sc.Buffer(make([]byte, 0, 64<<10), 4<<20)
	for sc.Scan() {
		line := strings.TrimRight(sc.Text(), "\r")
		i := strings.Index(line, "E2E-")
		if i < 0 {
			continue
		}
		f := strings.SplitN(line[i:], " ", 4)
		switch {
		case f[0] == "E2E-RESULT" && len(f) >= 3:
			res := &Result{Name: f[1], Pass: f[2] == "PASS", Skip: f[2] == "SKIP"}
			if len(f) == 4 {
				res.Detail = f[3]
			}
			if old, ok := r.Results[f[1]]; ok {
				res.Log = old.Log
			} else {
				r.Order = append(r.Order, f[1])
			}
			r.Results[f[1]] = res
		case f[0] == "E2E-LOG" && len(f) >= 2:
			name := strings.TrimSuffix(f[1], ":")
			if res, ok := r.Results[name]; ok {
				res.Log = append(res.Log, strings.TrimPrefix(line[i:], "E2E-LOG "))
			}
		case f[0] == "E2E-FILE" && len(f) == 3:
			if b, err := base64.StdEncoding.DecodeString(f[2]); err == nil {
				r.Files[f[1]] = b
			}
		}
	}
	return r
}

// Trim returns at most the last n lines of a console log, for printing.
func Trim(log []byte, n int) string {
	s := strings.ReplaceAll(string(log), "\r", "")
	return lastLines(s, n)
}
