// Command lifeboat is a node-local image cache for containerd that keeps pulls working when the
// upstream registry is down. See README.md.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/containerd/errdefs"
	"github.com/spf13/cobra"
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

// errorClasses are the errors that classify others for code (errors.Is) and whose names
// wrapping leaves at the end of a message: ": invalid argument", ": not found", ": usage".
var errorClasses = []error{
	errUsage,
	errdefs.ErrInvalidArgument, errdefs.ErrNotFound, errdefs.ErrAlreadyExists, errdefs.ErrPermissionDenied,
	errdefs.ErrResourceExhausted, errdefs.ErrFailedPrecondition, errdefs.ErrConflict, errdefs.ErrNotModified,
	errdefs.ErrAborted, errdefs.ErrOutOfRange, errdefs.ErrNotImplemented, errdefs.ErrInternal,
	errdefs.ErrUnavailable, errdefs.ErrDataLoss, errdefs.ErrUnauthenticated, errdefs.ErrUnknown,
}

// sentence is err as the one sentence the CLI prints: its message without the names of the
// classes it wraps at the end. A trailing "permission denied" of the operating system stays,
// as it is not errdefs.ErrPermissionDenied.
func sentence(err error) string {
	msg := err.Error()
	for trimmed := true; trimmed; {
		trimmed = false
		for _, class := range errorClasses {
			if rest, ok := strings.CutSuffix(msg, ": "+class.Error()); ok && errors.Is(err, class) {
				msg, trimmed = rest, true
			}
		}
	}
	return msg
}
