package main

import (
	"context"
	"fmt"

	"github.com/containerd/errdefs"
	"github.com/spf13/cobra"

	"github.com/lifeboat-dev/lifeboat/admin"
)

// refCommand is a command that does one thing to one cached image through the daemon: pin,
// unpin, rm. call does it; describe says what was done.
func refCommand(use, short, long string, call func(*admin.Client, context.Context, admin.RefRequest) (admin.RefResult, error), describe func(admin.RefResult) string) *cobra.Command {
	var f clientFlags
	cmd := &cobra.Command{
		Use:   use,
		Short: short,
		Long:  long,
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			names, err := normalizeRefs(args)
			if err != nil {
				return err
			}
			res, err := call(f.client(), cmd.Context(), admin.RefRequest{Ref: names[0]})
			if errdefs.IsNotFound(err) {
				return fmt.Errorf("%s is not cached", names[0])
			}
			if err != nil {
				return needDaemon(cmd, &f, err)
			}
			if f.json {
				return printJSON(cmd.OutOrStdout(), res)
			}
			_, err = fmt.Fprintln(cmd.OutOrStdout(), describe(res))
			return err
		},
	}
	f.register(cmd, true)
	return cmd
}

func newPinCommand() *cobra.Command {
	return refCommand("pin REF", "Keep a cached image out of eviction",
		`Keep a cached image, and every blob it reaches, out of eviction, whatever the size budget, until
it is unpinned or removed. The image must be cached (lifeboat pull it first).`,
		(*admin.Client).Pin, describePin)
}

func newUnpinCommand() *cobra.Command {
	return refCommand("unpin REF", "Make a pinned image evictable again", "",
		(*admin.Client).Unpin, describeUnpin)
}

func newRmCommand() *cobra.Command {
	return refCommand("rm REF", "Forget a cached image",
		`Forget a cached image ref and its pin. Its blobs stay cached, and are still served by digest,
until eviction removes them (when the cache needs the space, or at lifeboat gc if it is over its
target); blobs other images use stay with them.`,
		(*admin.Client).Remove, describeRm)
}

func describePin(r admin.RefResult) string {
	if !r.Changed {
		return fmt.Sprintf("%s was pinned already", r.Ref)
	}
	return fmt.Sprintf("pinned %s (%s): it is kept out of eviction", r.Ref, abbrevDigest(r.Digest))
}

func describeUnpin(r admin.RefResult) string {
	if !r.Changed {
		return fmt.Sprintf("%s was not pinned", r.Ref)
	}
	return fmt.Sprintf("unpinned %s: it can be evicted again", r.Ref)
}

func describeRm(r admin.RefResult) string {
	return fmt.Sprintf("removed %s; its blobs stay cached until evicted", r.Ref)
}
