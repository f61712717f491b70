// Command lifeboat is a node-local image cache for containerd that keeps pulls working when the
// upstream registry is down. See README.md.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
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

func newVersionCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print the lifeboat version",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			_, err := fmt.Fprintln(cmd.OutOrStdout(), "lifeboat", version)
			return err
		},
	}
}

// errUsage marks mistakes in how a command was called.
var errUsage = errors.New("usage")

// sentence is err as the one sentence the CLI prints: its message without the names of the
// classes it wraps at the end, errUsage included.
func sentence(err error) string { return errmsg.Sentence(err, errUsage) }
