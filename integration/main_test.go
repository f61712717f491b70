package integration

import (
	"os"
	"testing"

	"github.com/lifeboat-dev/lifeboat/integration/harness"
)

func TestMain(m *testing.M) {
	os.Exit(harness.Run(m))
}
