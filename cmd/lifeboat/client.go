package main

import (
	"encoding/json"
	"io"
	"os"

	"github.com/spf13/cobra"

	"github.com/lifeboat-dev/lifeboat/admin"
	"github.com/lifeboat-dev/lifeboat/config"
	"github.com/lifeboat-dev/lifeboat/resolver"
)

// clientFlags are the flags every command that talks to the daemon has.
type clientFlags struct {
	adminSocket string
	json        bool
}

func (f *clientFlags) register(cmd *cobra.Command, withJSON bool) {
	def := config.Default().Admin.Address
	if env := os.Getenv("LIFEBOAT_ADMIN_SOCKET"); env != "" {
		def = env
	}
	cmd.Flags().StringVar(&f.adminSocket, "admin-socket", def, "the daemon's admin socket (env LIFEBOAT_ADMIN_SOCKET)")
	if withJSON {
		cmd.Flags().BoolVar(&f.json, "json", false, "print JSON for machines")
	}
}

func (f *clientFlags) client() *admin.Client { return admin.NewClient(f.adminSocket) }

func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func humanBytes(n int64) string { return resolver.FormatSize(n) }
