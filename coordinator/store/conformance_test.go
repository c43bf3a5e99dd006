package store_test

import (
	"path/filepath"
	"testing"

	"github.com/edgewire/edgewire/coordinator/store"
	"github.com/edgewire/edgewire/coordinator/store/storetest"
)

func TestBoltContract(t *testing.T) {
	storetest.Run(t, func(t *testing.T) store.Store {
		b, err := store.OpenBolt(filepath.Join(t.TempDir(), "state.db"))
		if err != nil {
			t.Fatal(err)
		}
		return b
	})
}
