// Package size prints byte counts the one way lifeboat's messages and CLI print them.
package size

import "fmt"

// Format prints n bytes as "352 B", "8.2 KiB", "3.1 MiB": the one size format of the drill's
// findings, the CLI and the demo.
func Format(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}
