package coordinator

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"reflect"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"

	"github.com/edgewire/edgewire/coordinator/store"
	"github.com/edgewire/edgewire/coordinator/store/kubestore"
)

// migrateBatch is how many objects one store transaction moves.
const migrateBatch = 50

// MigrateResult counts what Migrate moved.
type MigrateResult struct {
	Nodes, Tokens int
}

// Migrate moves a lone coordinator's state (the bbolt store and the
// shared keys of cfg.DataDir, the coordinator stopped) into the
// Kubernetes store of cfg.Replication, so a running fleet goes
// replicated without a node joining again: keys, names, addresses,
// routes and tokens are kept, and so is the CA the agents pin. The
// target must be empty; what was written is read back and compared.
func Migrate(ctx context.Context, cfg Config) (MigrateResult, error) {
	var res MigrateResult
	r := cfg.Replication
	if r == nil {
		return res, errors.New("migrate: no Kubernetes store configured")
	}
	if cfg.Logger == nil {
		return res, errors.New("migrate: no logger")
	}
	bolt, err := store.OpenBolt(filepath.Join(cfg.DataDir, StoreFile))
	if err != nil {
		return res, fmt.Errorf("migrate: %w (stop the coordinator first)", err)
	}
	defer bolt.Close()
	var nodes []store.Node
	var tokens []store.Token
	if err := bolt.View(ctx, func(tx store.Tx) error {
		var err error
		if nodes, err = tx.Nodes(); err != nil {
			return err
		}
		tokens, err = tx.Tokens()
		return err
	}); err != nil {
		return res, fmt.Errorf("migrate: read %s: %w", StoreFile, err)
	}

	kc := storeClientConfig(r.Kube)
	cs, err := kubernetes.NewForConfig(kc)
	if err != nil {
		return res, err
	}
	dyn, err := dynamic.NewForConfig(kc)
	if err != nil {
		return res, err
	}
	ks, err := kubestore.Open(ctx, kubestore.Config{Client: dyn, Namespace: r.Namespace, Logger: cfg.Logger})
	if err != nil {
		return res, fmt.Errorf("migrate: open the Kubernetes store (are the CRDs installed?): %w", err)
	}
	var have []store.Node
	var haveTok []store.Token
	if err := ks.View(ctx, func(tx store.Tx) error {
		have, _ = tx.Nodes()
		haveTok, _ = tx.Tokens()
		return nil
	}); err != nil {
		return res, err
	}
	if len(have) > 0 || len(haveTok) > 0 {
		return res, fmt.Errorf("migrate: namespace %s already holds %d nodes and %d tokens; migrate into an empty store", r.Namespace, len(have), len(haveTok))
	}
	if err := migrateSecret(ctx, cfg, cs); err != nil {
		return res, err
	}
	for i := 0; i < len(tokens); i += migrateBatch {
		batch := tokens[i:min(i+migrateBatch, len(tokens))]
		if err := ks.Update(ctx, func(tx store.Tx) error {
			for _, t := range batch {
				if err := tx.PutToken(t); err != nil {
					return err
				}
			}
			return nil
		}); err != nil {
			return res, fmt.Errorf("migrate tokens: %w", err)
		}
		res.Tokens += len(batch)
	}
	for i := 0; i < len(nodes); i += migrateBatch {
		batch := nodes[i:min(i+migrateBatch, len(nodes))]
		if err := ks.Update(ctx, func(tx store.Tx) error {
			for _, n := range batch {
				if err := tx.PutNode(n); err != nil {
					return err
				}
			}
			return nil
		}); err != nil {
			return res, fmt.Errorf("migrate nodes: %w", err)
		}
		res.Nodes += len(batch)
		cfg.Logger.Info("migrating", "nodes", res.Nodes, "of", len(nodes))
	}

	// Read back through a fresh store: what the API server holds.
	check, err := kubestore.Open(ctx, kubestore.Config{Client: dyn, Namespace: r.Namespace, Logger: cfg.Logger})
	if err != nil {
		return res, err
	}
	var gotNodes []store.Node
	var gotTokens []store.Token
	if err := check.View(ctx, func(tx store.Tx) error {
		gotNodes, _ = tx.Nodes()
		gotTokens, _ = tx.Tokens()
		return nil
	}); err != nil {
		return res, err
	}
	if !reflect.DeepEqual(gotNodes, nodes) || !reflect.DeepEqual(gotTokens, tokens) {
		return res, fmt.Errorf("migrate: read back %d nodes and %d tokens that differ from the %d and %d written", len(gotNodes), len(gotTokens), len(nodes), len(tokens))
	}
	return res, nil
}

// migrateSecret creates the Secret of shared keys from the data dir. One
// that exists already must hold the same CA, or agents would stop
// trusting the replicas.
func migrateSecret(ctx context.Context, cfg Config, cs kubernetes.Interface) error {
	r := cfg.Replication
	data, err := createShared(cfg)
	if err != nil {
		return err
	}
	secrets := cs.CoreV1().Secrets(r.Namespace)
	name := secretName(r)
	sec, err := secrets.Get(ctx, name, metav1.GetOptions{})
	if err == nil {
		if string(sec.Data["ca.crt"]) != string(data["ca.crt"]) {
			return fmt.Errorf("migrate: Secret %s/%s exists with another CA; delete it (no replica has served yet) or migrate into another namespace", r.Namespace, name)
		}
		return nil
	}
	if !apierrors.IsNotFound(err) {
		return err
	}
	_, err = secrets.Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: r.Namespace,
		Labels: map[string]string{"app.kubernetes.io/name": "edgewire", "app.kubernetes.io/component": "coordinator"}},
		Data: data}, metav1.CreateOptions{})
	return err
}
