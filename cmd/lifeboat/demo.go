package main

import (
	"fmt"
	"io"
	"strings"

	"github.com/spf13/cobra"

	"github.com/lifeboat-dev/lifeboat/config"
	"github.com/lifeboat-dev/lifeboat/internal/daemon"
	"github.com/lifeboat-dev/lifeboat/internal/demo"
)

type demoFlags struct {
	json     bool
	keep     bool
	logLevel string
}

func newDemoCommand() *cobra.Command {
	var f demoFlags
	cmd := &cobra.Command{
		Use:   "demo",
		Short: "Tour lifeboat in one process: pull through it, simulate a registry outage, pull again",
		Long: `Run a self-contained tour of lifeboat that needs no containerd, no root and no network.

In this one process, on 127.0.0.1 only, the demo starts a registry with a generated image, then
lifeboat (cache, resolver and registry mirror, wired as "lifeboat serve" wires them) on a fresh
temporary root, and pulls through the mirror with containerd's own registry client:

  1. a cold pull, that lifeboat fetches from the registry and caches;
  2. a warm pull, served from the cache after one tag check;
  3. a pull of the same image during a simulated blackhole outage: served from the cache;
  4. a pull of an image lifeboat never cached, during the outage: it fails at once;
  5. the cached image again during the outage, once lifeboat has marked the registry down;
  6. a pull after the outage, when lifeboat checks tags with the registry again.

It prints what happened, with timings and lifeboat's X-Lifeboat-Cache answers, then removes its
temporary directory (--keep keeps it). It exits 0 when every step behaved as expected, 1 if one
did not, so it doubles as a self-test.

--json prints one object instead: ok (bool), problems (sentences), registry, upstream, mirror,
root, kept, upstreamTimeout, images (ref, digest, size, layers), durationMs, and steps, each with
number, name, ref, outage (the mode in force, if any), expect ("pull" or "fail"), ok, pulled,
durationMs, registryDown (lifeboat had marked the registry down when the step began), bytes
(received from the mirror), upstream (requests and bytes that reached the
registry), answers (kind "tag", "manifest" or "blob", HTTP status, cache, count), error (the
client's), lifeboatSays (the mirror's error message) and note.`,
		Example: `  lifeboat demo
  lifeboat demo --json | jq '.steps[] | {name, ok, durationMs}'`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := daemon.SetupLogging(config.Log{Level: f.logLevel, Format: "text"}); err != nil {
				return fmt.Errorf("--log-level %q is not one of trace, debug, info, warn, error", f.logLevel)
			}
			out := cmd.OutOrStdout()
			progress := out
			if f.json {
				progress = io.Discard
			}
			rep, err := demo.Run(cmd.Context(), progress, demo.Options{Keep: f.keep, Version: version})
			if err != nil {
				return err
			}
			if f.json {
				if err := printJSON(out, rep); err != nil {
					return err
				}
			}
			if !rep.OK {
				return fmt.Errorf("the demo did not behave as expected (run it with --keep --log-level debug to look closer): %s", strings.Join(rep.Problems, "; "))
			}
			return nil
		},
	}
	fl := cmd.Flags()
	fl.BoolVar(&f.json, "json", false, "print the steps as JSON")
	fl.BoolVar(&f.keep, "keep", false, "keep the temporary directory (lifeboat's cache and the pulled content) and say where it is")
	fl.StringVar(&f.logLevel, "log-level", "error", "level of lifeboat's own log, on stderr: trace, debug, info, warn, error")
	return cmd
}
