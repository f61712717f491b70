package harness

import (
	"bufio"
	"bytes"
	"context"
	"encoding/xml"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// ToolConformance is the OCI distribution-spec conformance program
// (github.com/opencontainers/distribution-spec/conformance), installed into bin/tools by
// hack/tools.sh.
const ToolConformance = "conformance"

// Files the conformance program writes into its results directory (besides report.html).
const (
	conformanceJUnit   = "junit.xml"
	conformanceResults = "results.yaml"
)

// maxAttachedReport bounds how much of a conformance report file is attached to a failed test.
const maxAttachedReport = 256 << 10

// Conformance is one finished run of the conformance program.
type Conformance struct {
	// Dir is the run's working directory; its results are in Dir/results.
	Dir string
	// Output is what the program printed, stdout and stderr interleaved: its log, the tree of
	// tests with their errors, the configuration and the summaries.
	Output string
	// Err is how the program exited (nil for status 0), or why it could not run.
	Err error
	// Result is the overall status the program printed ("Pass", "FAIL", "Error", ...), "" if
	// it printed none.
	Result string
	// APIs maps each API the program knows ("Manifest get by tag", "Blob head", ...) to the
	// status it printed for it ("Pass", "FAIL", "Skip", "Disabled", ...).
	APIs map[string]string
	// Counts of test cases, from junit.xml.
	Tests, Failures, Errors, Skipped, Disabled int
	// ReportErr says why junit.xml could not be read; the counts are zero then.
	ReportErr error
}

// RunConformance runs the conformance program once in a new temporary directory, with the
// test's environment minus every inherited OCI_* variable (a developer's settings must not
// change what is tested) plus env ("OCI_REGISTRY=...", ...) and OCI_RESULTS_DIR. It is killed
// after timeout. RunConformance fails the test only if the program is missing; its outcome is
// in the returned Conformance, which Attach writes into the test output.
func RunConformance(t testing.TB, timeout time.Duration, env ...string) *Conformance {
	t.Helper()
	bin := Tool(t, ToolConformance)
	c := &Conformance{Dir: t.TempDir(), APIs: make(map[string]string)}
	resultsDir := filepath.Join(c.Dir, "results")

	ctx, cancel := context.WithTimeout(t.Context(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin)
	// The working directory matters: the program reads ./oci-conformance.yaml if it exists.
	cmd.Dir = c.Dir
	cmd.Env = append(append(conformanceEnv(), env...), "OCI_RESULTS_DIR="+resultsDir)
	// One writer for both: exec.Cmd then writes to it from one goroutine at a time.
	out := &bytes.Buffer{}
	cmd.Stdout = out
	cmd.Stderr = out
	cmd.WaitDelay = 5 * time.Second
	c.Err = cmd.Run()
	if ctx.Err() != nil {
		c.Err = fmt.Errorf("%v (killed after %s)", c.Err, timeout)
	}
	c.Output = out.String()
	c.parseOutput()
	c.ReportErr = c.readJUnit(filepath.Join(resultsDir, conformanceJUnit))
	return c
}

// conformanceEnv is the test's environment without OCI_* variables.
func conformanceEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "OCI_") {
			env = append(env, kv)
		}
	}
	return env
}

// conformanceAPILine is a line of the "API conformance:" summary: two spaces, the API name
// padded with dots, a colon and the status right-aligned.
var conformanceAPILine = regexp.MustCompile(`^  ([A-Za-z][A-Za-z ]*?)\.*: +(\S+)$`)

// parseOutput picks the overall result and the per-API statuses out of the printed summary.
func (c *Conformance) parseOutput() {
	inAPIs := false
	sc := bufio.NewScanner(strings.NewReader(c.Output))
	sc.Buffer(make([]byte, 0, 64<<10), 4<<20)
	for sc.Scan() {
		line := sc.Text()
		if s, ok := strings.CutPrefix(line, "OCI Conformance Result: "); ok {
			c.Result = strings.TrimSpace(s)
			continue
		}
		switch {
		case line == "API conformance:":
			inAPIs = true
		case inAPIs && line == "":
			inAPIs = false
		case inAPIs:
			if m := conformanceAPILine.FindStringSubmatch(line); m != nil {
				c.APIs[m[1]] = m[2]
			}
		}
	}
}

// readJUnit reads the test case counts of junit.xml.
func (c *Conformance) readJUnit(path string) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	var suites struct {
		Tests    int `xml:"tests,attr"`
		Failures int `xml:"failures,attr"`
		Errors   int `xml:"errors,attr"`
		Skipped  int `xml:"skipped,attr"`
		Disabled int `xml:"disabled,attr"`
	}
	if err := xml.Unmarshal(b, &suites); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	c.Tests, c.Failures, c.Errors, c.Skipped, c.Disabled = suites.Tests, suites.Failures, suites.Errors, suites.Skipped, suites.Disabled
	return nil
}

// Passed reports whether the run is a clean pass: exit status 0, an overall result of Pass,
// and junit.xml read with no failure and no error.
func (c *Conformance) Passed() bool {
	return c.Err == nil && c.Result == "Pass" && c.ReportErr == nil && c.Failures == 0 && c.Errors == 0
}

// Summary is one line saying how the run went.
func (c *Conformance) Summary() string {
	exit := "exit status 0"
	if c.Err != nil {
		exit = c.Err.Error()
	}
	counts := fmt.Sprintf("%d tests, %d failed, %d errors, %d skipped, %d disabled", c.Tests, c.Failures, c.Errors, c.Skipped, c.Disabled)
	if c.ReportErr != nil {
		counts = "no junit.xml: " + c.ReportErr.Error()
	}
	return fmt.Sprintf("result %q, %s; %s", c.Result, exit, counts)
}

// Attach writes the program's output and its results.yaml and junit.xml (which holds every
// request and response of every test case) into the test output. report.html, the same in
// HTML, is left in Dir/results, which is removed with the test's temporary directories.
func (c *Conformance) Attach(t testing.TB, name string) {
	t.Helper()
	t.Logf("---- conformance %s output ----\n%s\n---- end of conformance %s output ----", name, c.Output, name)
	for _, f := range []string{conformanceResults, conformanceJUnit} {
		t.Logf("---- conformance %s %s ----\n%s\n---- end of conformance %s %s ----", name, f, readHead(filepath.Join(c.Dir, "results", f), maxAttachedReport), name, f)
	}
}

// readHead returns up to limit bytes of a file, or a note saying why it could not be read.
func readHead(path string, limit int64) string {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Sprintf("(%v)", err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, limit+1))
	if err != nil {
		return fmt.Sprintf("(reading %s: %v)", path, err)
	}
	if int64(len(b)) > limit {
		return fmt.Sprintf("%s\n(truncated at %d bytes)", b[:limit], limit)
	}
	return string(b)
}
