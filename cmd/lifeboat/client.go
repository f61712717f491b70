package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"

	"github.com/spf13/cobra"

	"github.com/lifeboat-dev/lifeboat/admin"
	"github.com/lifeboat-dev/lifeboat/config"
	"github.com/lifeboat-dev/lifeboat/internal/size"
)

// clientFlags are the flags every command that talks to the daemon has.
//
// The admin socket is, as for serve: --admin-socket, else LIFEBOAT_ADMIN_SOCKET, else the
// configuration's [admin] address (the file from --config, else LIFEBOAT_CONFIG, else the
// default file if it exists), else the default.
type clientFlags struct {
	adminSocket string
	configFile
	json bool
}

// configFile is the --config flag of a command that reads the configuration without running
// the daemon.
type configFile struct {
	configPath string
	// cfg is the configuration, once read by load.
	cfg *config.Config
}

func (f *configFile) register(cmd *cobra.Command, usage string) {
	cmd.Flags().StringVar(&f.configPath, "config", config.DefaultPath, usage)
}

func (f *clientFlags) register(cmd *cobra.Command, withJSON bool) {
	fl := cmd.Flags()
	fl.StringVar(&f.adminSocket, "admin-socket", config.Default().Admin.Address,
		"the daemon's admin socket (default: env LIFEBOAT_ADMIN_SOCKET, else [admin] address from the configuration, else /run/lifeboat/admin.sock)")
	f.configFile.register(cmd, "configuration file to take the admin socket from (env LIFEBOAT_CONFIG)")
	if withJSON {
		fl.BoolVar(&f.json, "json", false, "print JSON for machines")
	}
	// Resolve the socket before the command runs, whatever else it sets up.
	prev := cmd.PreRunE
	cmd.PreRunE = func(cmd *cobra.Command, args []string) error {
		if err := f.resolveSocket(cmd); err != nil {
			return err
		}
		if prev != nil {
			return prev(cmd, args)
		}
		return nil
	}
}

// resolveSocket sets f.adminSocket by the precedence flag > environment > configuration file >
// default. The configuration file is read only when it decides.
func (f *clientFlags) resolveSocket(cmd *cobra.Command) error {
	if cmd.Flags().Changed("admin-socket") {
		return nil
	}
	if env := os.Getenv("LIFEBOAT_ADMIN_SOCKET"); env != "" {
		f.adminSocket = env
		return nil
	}
	cfg, err := f.load(cmd)
	if err != nil {
		return err
	}
	f.adminSocket = cfg.Admin.Address
	return nil
}

// load reads the configuration file once: --config, else LIFEBOAT_CONFIG, else the default
// file, whose absence means the defaults (an explicit file must exist).
func (f *configFile) load(cmd *cobra.Command) (config.Config, error) {
	if f.cfg != nil {
		return *f.cfg, nil
	}
	path, explicit := f.configPath, cmd.Flags().Changed("config")
	if env := os.Getenv("LIFEBOAT_CONFIG"); env != "" && !explicit {
		path, explicit = env, true
	}
	cfg, err := config.Load(path, explicit)
	switch {
	case err != nil && !explicit && errors.Is(err, fs.ErrPermission):
		// The default file is root's (it may hold registry passwords); so is the admin socket,
		// and the error reaching it will say so.
		cfg = config.Default()
	case err != nil:
		return cfg, fmt.Errorf("cannot read the configuration: %w", err)
	}
	f.cfg = &cfg
	return cfg, nil
}

func (f *clientFlags) client() *admin.Client { return admin.NewClient(f.adminSocket) }

func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func humanBytes(n int64) string { return size.Format(n) }
