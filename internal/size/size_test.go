package size

import "testing"

func TestFormat(t *testing.T) {
	t.Parallel()
	for n, want := range map[int64]string{0: "0 B", 352: "352 B", 8397: "8.2 KiB", 3 << 20: "3.0 MiB", 5 << 30: "5.0 GiB"} {
		if got := Format(n); got != want {
			t.Errorf("Format(%d) = %q, want %q", n, got, want)
		}
	}
}
