// Command lifeboat is a node-local image cache for containerd that keeps pulls working when the
// upstream registry is down. See README.md.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"runtime"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/lifeboat-dev/lifeboat/internal/errmsg"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "lifeboat:", sentence(err))
		os.Exit(1)
	}
}

func run() error {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	return newRootCommand().ExecuteContext(ctx)
}

func newRootCommand() *cobra.Command {
	root := &cobra.Command{
		Use:           "lifeboat",
		Short:         "A node-local image cache for containerd that keeps pulls working when registries fail",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.AddCommand(newServeCommand(), newStatusCommand(),
		newImagesCommand(), newPullCommand(), newWarmCommand(), newPinCommand(), newUnpinCommand(), newRmCommand(), newGCCommand(), newVerifyCommand(),
		newOutageCommand(), newDrillCommand(), newConfigureCommand(), newDemoCommand(), newVersionCommand())
	return root
}

// versionInfo is what `lifeboat version --json` prints.
type versionInfo struct {
	Version string `json:"version"`
	// Go is the Go release lifeboat was built with.
	Go string `json:"go"`
}

func newVersionCommand() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "version",
		Short: "Print the lifeboat version",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if asJSON {
				return printJSON(cmd.OutOrStdout(), versionInfo{Version: version, Go: runtime.Version()})
			}
			_, err := fmt.Fprintln(cmd.OutOrStdout(), "lifeboat", version)
			return err
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON for machines: version, go")
	return cmd
}

// errUsage marks mistakes in how a command was called.
var errUsage = errors.New("usage")

// sentence is err as the one sentence the CLI prints: its message without the names of the
// classes it wraps at the end, errUsage included.
func sentence(err error) string { return errmsg.Sentence(err, errUsage) }
