package cache

import (
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
)

// layout is where the cache's files live under its root (see the schema comment in schema.go):
// index.db, blobs/<alg>/<hex>, ingest/<sha256 of ingest ref> and quarantine/.
type layout struct {
	root string
}

func (l layout) indexPath() string     { return filepath.Join(l.root, "index.db") }
func (l layout) blobsDir() string      { return filepath.Join(l.root, "blobs") }
func (l layout) ingestDir() string     { return filepath.Join(l.root, "ingest") }
func (l layout) quarantineDir() string { return filepath.Join(l.root, "quarantine") }

// create makes the root and its directories, if missing.
func (l layout) create() error {
	for _, dir := range []string{l.root, l.blobsDir(), l.ingestDir(), l.quarantineDir()} {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return fmt.Errorf("cache root: %w", err)
		}
	}
	return nil
}

func (l layout) blobPath(dgst digest.Digest) (string, error) {
	if err := dgst.Validate(); err != nil {
		return "", fmt.Errorf("invalid digest %q: %v: %w", dgst, err, errdefs.ErrInvalidArgument)
	}
	return filepath.Join(l.blobsDir(), dgst.Algorithm().String(), dgst.Encoded()), nil
}

// ingestPath is where the bytes of the ingest named ref are written. The name is a digest of
// the ref so that any ref, however long or strange, maps to one fixed-length file in ingest/.
func (l layout) ingestPath(ref string) string {
	return filepath.Join(l.ingestDir(), digest.FromString(ref).Encoded())
}

// blobFiles maps every blob file under blobs/ to its path, and lists separately the paths that
// are not named <alg>/<hex> with a valid digest.
func (l layout) blobFiles() (files map[digest.Digest]string, bad []string, err error) {
	files = map[digest.Digest]string{}
	root := l.blobsDir()
	algs, err := os.ReadDir(root)
	if err != nil {
		return nil, nil, err
	}
	for _, alg := range algs {
		dir := filepath.Join(root, alg.Name())
		if !alg.IsDir() {
			bad = append(bad, dir)
			continue
		}
		entries, err := os.ReadDir(dir)
		if err != nil {
			return nil, nil, err
		}
		for _, e := range entries {
			p := filepath.Join(dir, e.Name())
			d := digest.NewDigestFromEncoded(digest.Algorithm(alg.Name()), e.Name())
			if e.IsDir() || d.Validate() != nil {
				bad = append(bad, p)
				continue
			}
			files[d] = p
		}
	}
	return files, bad, nil
}

// quarantine moves a file out of blobs/ so it is never served, keeping it for inspection.
func (l layout) quarantine(path string) error {
	rel, err := filepath.Rel(l.blobsDir(), path)
	if err != nil {
		return err
	}
	name := fmt.Sprintf("%s-%d", filepath.ToSlash(rel), time.Now().UnixNano())
	dst := filepath.Join(l.quarantineDir(), filepathSafe(name))
	if err := os.Rename(path, dst); err != nil {
		return fmt.Errorf("quarantine %s: %w", path, err)
	}
	return nil
}

func filepathSafe(s string) string {
	b := []byte(s)
	for i, c := range b {
		if c == '/' {
			b[i] = '-'
		}
	}
	return string(b)
}
