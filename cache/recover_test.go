package cache

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	bolt "go.etcd.io/bbolt"
)

func TestMain(m *testing.M) {
	if root := os.Getenv(crashHelperEnv); root != "" {
		os.Exit(runCrashHelper(root))
	}
	os.Exit(m.Run())
}

func TestRecoveryRepairsIndexAndFiles(t *testing.T) {
	root := t.TempDir()
	ctx := t.Context()
	s, err := Open(ctx, root, Options{MaxSize: 1 << 30})
	if err != nil {
		t.Fatal(err)
	}
	kept := writeBlob(t, s, "", randomBytes(50, 2000))
	lost := writeBlob(t, s, "", randomBytes(51, 2000))
	w, err := s.Writer(ctx, content.WithRef("resumable"))
	if err != nil {
		t.Fatal(err)
	}
	w.Write(randomBytes(52, 100))
	w.Close()
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	// What a crash can leave behind:
	// 1. an index entry whose file is gone,
	lostPath, _ := s.files.blobPath(lost.Digest)
	if err := os.Remove(lostPath); err != nil {
		t.Fatal(err)
	}
	// 2. a complete blob file renamed into place whose index commit never happened,
	orphan := randomBytes(53, 3000)
	orphanDigest := digest.FromBytes(orphan)
	mustWrite(t, filepath.Join(root, "blobs", "sha256", orphanDigest.Encoded()), orphan)
	// 3. a file whose bytes do not match its name, and one that is not a digest at all,
	mustWrite(t, filepath.Join(root, "blobs", "sha256", digest.FromString("other").Encoded()), []byte("not the bytes of that digest"))
	mustWrite(t, filepath.Join(root, "blobs", "sha256", "junk"), []byte("junk"))
	// 4. an ingest file without an index entry, and an ingest entry without a file.
	mustWrite(t, filepath.Join(root, "ingest", digest.FromString("forgotten").Encoded()), []byte("partial"))
	db, err := bolt.Open(filepath.Join(root, "index.db"), 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Update(func(tx *bolt.Tx) error {
		return putIngest(tx, "no-file", ingestRecord{StartedAt: time.Now(), UpdatedAt: time.Now()})
	}); err != nil {
		t.Fatal(err)
	}
	db.Close()

	s = newStoreAt(t, root)
	rep := s.LastRecovery()
	if !slices.Equal(rep.DroppedEntries, []digest.Digest{lost.Digest}) {
		t.Errorf("dropped entries %v, want [%s]", rep.DroppedEntries, lost.Digest)
	}
	if !slices.Equal(rep.Reindexed, []digest.Digest{orphanDigest}) {
		t.Errorf("reindexed %v, want [%s]", rep.Reindexed, orphanDigest)
	}
	if len(rep.Quarantined) != 2 || rep.OrphanIngests != 1 || rep.DroppedIngests != 1 || rep.ResumableIngest != 1 {
		t.Errorf("recovery report %+v: want 2 quarantined, 1 orphan ingest, 1 dropped ingest, 1 resumable", rep)
	}
	if q, _ := os.ReadDir(filepath.Join(root, "quarantine")); len(q) != 2 {
		t.Errorf("quarantine holds %d files, want 2", len(q))
	}
	if b, err := content.ReadBlob(ctx, s, ocispec.Descriptor{Digest: orphanDigest}); err != nil || !bytes.Equal(b, orphan) {
		t.Errorf("re-indexed blob not served intact: %v", err)
	}
	if _, err := s.Info(ctx, lost.Digest); !errdefs.IsNotFound(err) {
		t.Errorf("Info of a blob whose file vanished = %v, want not found", err)
	}
	if !cached(t, s, kept.Digest) {
		t.Error("an intact blob was lost in recovery")
	}
	if used, _ := s.Usage(); used != kept.Size+int64(len(orphan)) {
		t.Errorf("usage %d after recovery, want %d", used, kept.Size+int64(len(orphan)))
	}
	if st, err := s.Status(ctx, "resumable"); err != nil || st.Offset != 100 {
		t.Errorf("resumable ingest: %+v %v", st, err)
	}
}

// TestRecoveryFinishesALinkingCommit stops a LinkingTo write where a crash inside its commit
// would: the bytes renamed into blobs/, the index transaction that indexes and links them never
// committed. Recovery reindexes the blob with the media type and the repository link its ingest's
// entry recorded, so that the blob is served for that repository as if the commit had finished.
func TestRecoveryFinishesALinkingCommit(t *testing.T) {
	const repo = "registry.test/app"
	root := t.TempDir()
	ctx := t.Context()
	s, err := Open(ctx, root, Options{MaxSize: 1 << 30})
	if err != nil {
		t.Fatal(err)
	}
	data := randomBytes(54, 3000)
	desc := ocispec.Descriptor{MediaType: ocispec.MediaTypeImageManifest, Digest: digest.FromBytes(data), Size: int64(len(data))}
	w, err := s.LinkingTo(repo).Writer(ctx, content.WithRef("m"), content.WithDescriptor(desc))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write(data); err != nil {
		t.Fatal(err)
	}
	w.Close()
	// The commit's rename, and nothing after it.
	target, _ := s.files.blobPath(desc.Digest)
	os.MkdirAll(filepath.Dir(target), 0o700)
	if err := os.Rename(s.files.ingestPath("m"), target); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	s = newStoreAt(t, root)
	if rep := s.LastRecovery(); !slices.Equal(rep.Reindexed, []digest.Digest{desc.Digest}) || rep.Relinked != 1 || rep.DroppedIngests != 1 {
		t.Errorf("recovery report %+v: want the blob reindexed and relinked, its ingest dropped", rep)
	}
	if ok, err := s.Linked(ctx, repo, desc.Digest); err != nil || !ok {
		t.Errorf("after recovery: linked=%v %v, want the blob linked to %s", ok, err, repo)
	}
	if mt, err := s.MediaType(ctx, desc.Digest); err != nil || mt != desc.MediaType {
		t.Errorf("after recovery: media type %q %v, want %q", mt, err, desc.MediaType)
	}
	if b, err := content.ReadBlob(ctx, s, desc); err != nil || !bytes.Equal(b, data) {
		t.Errorf("recovered blob not served intact: %v", err)
	}
}

// newStoreAt opens an existing root with newStore's cleanup checks.
func newStoreAt(t *testing.T, root string) *Store {
	t.Helper()
	s, err := Open(t.Context(), root, Options{MaxSize: 1 << 30})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		checkConsistent(t, s)
		s.Close()
	})
	return s
}

func mustWrite(t *testing.T, path string, b []byte) {
	t.Helper()
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

func TestVerifyFindsAndQuarantinesCorruption(t *testing.T) {
	s := newStore(t, Options{MaxSize: 1 << 30})
	ctx := t.Context()
	good := writeBlob(t, s, "", randomBytes(60, 5000))
	bad := writeBlob(t, s, "", randomBytes(61, 5000))
	p, _ := s.files.blobPath(bad.Digest)
	if err := os.Chmod(p, 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(p, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteAt([]byte{0xde, 0xad}, 10) // bit rot after the fact
	f.Close()

	rep, err := s.Verify(ctx, false)
	if err != nil {
		t.Fatal(err)
	}
	if rep.Checked != 2 || !slices.Equal(rep.Corrupt, []digest.Digest{bad.Digest}) || len(rep.Missing) != 0 {
		t.Fatalf("verify report %+v, want 2 checked and %s corrupt", rep, bad.Digest)
	}
	if !cached(t, s, bad.Digest) {
		t.Fatal("verify without repair changed the cache")
	}

	rep, err = s.Verify(ctx, true)
	if err != nil {
		t.Fatal(err)
	}
	if !rep.Repaired || !slices.Equal(rep.Corrupt, []digest.Digest{bad.Digest}) {
		t.Fatalf("verify --repair report %+v", rep)
	}
	if cached(t, s, bad.Digest) || !cached(t, s, good.Digest) {
		t.Fatal("repair must drop exactly the corrupt blob")
	}
	if _, err := s.ReaderAt(ctx, bad); !errdefs.IsNotFound(err) {
		t.Fatalf("corrupt blob still served: %v", err)
	}
	if q, _ := os.ReadDir(filepath.Join(s.Root(), "quarantine")); len(q) != 1 {
		t.Errorf("quarantine holds %d files, want 1", len(q))
	}
	// The blob can be fetched again, as the resolver will on next use.
	writeBlob(t, s, "", randomBytes(61, 5000))
}

func TestMigrations(t *testing.T) {
	t.Run("fresh index gets every bucket and the current version", func(t *testing.T) {
		s := newStore(t, Options{MaxSize: 1 << 20})
		v, err := readVersion(s.db)
		if err != nil || v != schemaVersion {
			t.Fatalf("version %d (%v), want %d", v, err, schemaVersion)
		}
		s.db.View(func(tx *bolt.Tx) error {
			for _, b := range [][]byte{bucketMeta, bucketBlobs, bucketRefs, bucketLinks, bucketPins, bucketIngests} {
				if tx.Bucket(b) == nil {
					t.Errorf("bucket %s missing", b)
				}
			}
			return nil
		})
	})
	for _, m := range migrations {
		t.Run(fmt.Sprintf("to version %d (%s)", m.version, m.name), func(t *testing.T) {
			root := t.TempDir()
			db, err := bolt.Open(filepath.Join(root, "index.db"), 0o600, nil)
			if err != nil {
				t.Fatal(err)
			}
			// An index at the version before this migration.
			if err := db.Update(func(tx *bolt.Tx) error {
				for _, prev := range migrations {
					if prev.version >= m.version {
						break
					}
					if err := prev.apply(tx); err != nil {
						return err
					}
				}
				meta, err := tx.CreateBucketIfNotExists(bucketMeta)
				if err != nil {
					return err
				}
				return meta.Put(keyVersion, encodeUint(uint64(m.version-1)))
			}); err != nil {
				t.Fatal(err)
			}
			if err := migrate(db); err != nil {
				t.Fatal(err)
			}
			if v, _ := readVersion(db); v != schemaVersion {
				t.Errorf("version %d after migrating, want %d", v, schemaVersion)
			}
			db.Close()
			// The migrated index is fully usable.
			s := newStoreAt(t, root)
			img := putImage(t, s, "registry.test/migrated:1", randomBytes(70, 100))
			if err := s.Pin(t.Context(), img.ref); err != nil {
				t.Fatal(err)
			}
		})
	}
	t.Run("a newer index is refused", func(t *testing.T) {
		root := t.TempDir()
		db, err := bolt.Open(filepath.Join(root, "index.db"), 0o600, nil)
		if err != nil {
			t.Fatal(err)
		}
		db.Update(func(tx *bolt.Tx) error {
			meta, _ := tx.CreateBucketIfNotExists(bucketMeta)
			return meta.Put(keyVersion, encodeUint(uint64(schemaVersion+1)))
		})
		db.Close()
		_, err = Open(t.Context(), root, Options{MaxSize: 1 << 20})
		if err == nil || !strings.Contains(err.Error(), "newer than this lifeboat") {
			t.Fatalf("Open of a newer index = %v, want a clear refusal", err)
		}
	})
}

func TestAccessTimesAreBatched(t *testing.T) {
	s := newStore(t, Options{MaxSize: 1 << 30, AccessFlushInterval: time.Hour})
	ctx := t.Context()
	desc := writeBlob(t, s, "", randomBytes(80, 100))
	before, _ := s.Info(ctx, desc.Digest)
	stats := s.db.Stats()
	writes := stats.TxStats.GetWrite()
	var last time.Time
	for range 100 {
		ra, err := s.ReaderAt(ctx, desc)
		if err != nil {
			t.Fatal(err)
		}
		ra.Close()
		last = time.Now()
	}
	stats = s.db.Stats()
	if got := stats.TxStats.GetWrite(); got != writes {
		t.Fatalf("100 reads made %d index page writes, want none before the flush", got-writes)
	}
	if err := s.uses.flush(); err != nil {
		t.Fatal(err)
	}
	var rec blobRecord
	s.db.View(func(tx *bolt.Tx) error { rec, _, _ = getBlob(tx, desc.Digest); return nil })
	if !rec.AccessedAt.After(before.CreatedAt) || rec.AccessedAt.After(last) {
		t.Errorf("flushed access time %s, want after creation %s and at most %s", rec.AccessedAt, before.CreatedAt, last)
	}
}

const crashHelperEnv = "LIFEBOAT_CACHE_CRASH_HELPER_ROOT"

// runCrashHelper is a separate process that writes blobs into the cache at root as fast as it
// can, announcing each commit on stdout ("committed <digest>"). With LIFEBOAT_CRASH_HALT set it
// instead stops half way through a blob ("halted <digest>") and waits to be killed.
func runCrashHelper(root string) int {
	ctx := context.Background()
	s, err := Open(ctx, root, Options{MaxSize: 1 << 40})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	halt := os.Getenv("LIFEBOAT_CRASH_HALT") != ""
	for i := int64(0); ; i++ {
		data := randomBytes(1000+i, 512<<10)
		desc := ocispec.Descriptor{Digest: digest.FromBytes(data), Size: int64(len(data))}
		w, err := s.Writer(ctx, content.WithRef(fmt.Sprintf("crash-%d", i)), content.WithDescriptor(desc))
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		for off := 0; off < len(data); off += 32 << 10 {
			if halt && i == 3 && off == len(data)/2 {
				fmt.Printf("halted %s\n", desc.Digest)
				select {} // killed here, mid-write
			}
			if _, err := w.Write(data[off : off+32<<10]); err != nil {
				fmt.Fprintln(os.Stderr, err)
				return 1
			}
		}
		if err := w.Commit(ctx, desc.Size, desc.Digest); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		fmt.Printf("committed %s\n", desc.Digest)
	}
}

// TestCrashDuringWrites kills a writing process with SIGKILL, mid-blob and at arbitrary points
// of a commit stream, and proves the reopened cache is consistent: every announced commit is
// served byte-exact, and no partial blob is ever served.
func TestCrashDuringWrites(t *testing.T) {
	for _, tc := range []struct {
		name    string
		halt    bool
		commits int // kill after this many announced commits
	}{
		{name: "mid-blob", halt: true},
		{name: "commit stream after 2", commits: 2},
		{name: "commit stream after 5", commits: 5},
		{name: "commit stream after 9", commits: 9},
	} {
		t.Run(tc.name, func(t *testing.T) {
			root := t.TempDir()
			cmd := exec.Command(os.Args[0], "-test.run=^$")
			cmd.Env = append(os.Environ(), crashHelperEnv+"="+root)
			if tc.halt {
				cmd.Env = append(cmd.Env, "LIFEBOAT_CRASH_HALT=1")
			}
			var stderr bytes.Buffer
			cmd.Stderr = &stderr
			out, err := cmd.StdoutPipe()
			if err != nil {
				t.Fatal(err)
			}
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			var committed []digest.Digest
			var halted digest.Digest
			lines := bufio.NewScanner(out)
			for lines.Scan() {
				f := strings.Fields(lines.Text())
				if len(f) != 2 {
					continue
				}
				if f[0] == "halted" {
					halted = digest.Digest(f[1])
					break
				}
				committed = append(committed, digest.Digest(f[1]))
				if !tc.halt && len(committed) == tc.commits {
					break
				}
			}
			cmd.Process.Signal(syscall.SIGKILL)
			cmd.Wait()
			if tc.halt && halted == "" || !tc.halt && len(committed) < tc.commits {
				t.Fatalf("helper stopped early: %s", stderr.String())
			}

			s := newStoreAt(t, root)
			ctx := t.Context()
			for _, d := range committed {
				b, err := content.ReadBlob(ctx, s, ocispec.Descriptor{Digest: d})
				if err != nil || digest.FromBytes(b) != d {
					t.Errorf("committed blob %s not served intact after the crash: %v", d, err)
				}
			}
			// Whatever else is indexed is complete: checkConsistent rehashes every blob at
			// cleanup. The blob cut in half must not be served at all.
			if tc.halt {
				if _, err := s.ReaderAt(ctx, ocispec.Descriptor{Digest: halted}); !errdefs.IsNotFound(err) {
					t.Fatalf("the half-written blob is served: %v", err)
				}
				// Its ingest resumes where the kill left it and completes.
				data := randomBytes(1003, 512<<10)
				desc := ocispec.Descriptor{Digest: halted, Size: int64(len(data))}
				w, err := s.Writer(ctx, content.WithRef("crash-3"), content.WithDescriptor(desc))
				if err != nil {
					t.Fatal(err)
				}
				st, _ := w.Status()
				if st.Offset != desc.Size/2 {
					t.Errorf("resumed at %d, want %d", st.Offset, desc.Size/2)
				}
				if err := content.Copy(ctx, w, bytes.NewReader(data), desc.Size, desc.Digest); err != nil {
					t.Fatalf("resume after crash: %v", err)
				}
			}
		})
	}
}
