package svcsource

import (
	"encoding/json"
	"os"
	"reflect"
	"strings"
	"testing"

	"github.com/edgewire/edgewire/types/services"
)

// loadBytes runs Load on b written to a file in dir.
func loadBytes(t testing.TB, dir string, b []byte) ([]*services.Service, error) {
	t.Helper()
	f, err := os.CreateTemp(dir, "services-*.json")
	if err != nil {
		t.Fatal(err)
	}
	defer os.Remove(f.Name())
	if _, err := f.Write(b); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	return Load(f.Name())
}

// writeFile is the inverse of Load: a services file holding svcs.
func writeFile(t testing.TB, svcs []*services.Service) []byte {
	t.Helper()
	f := struct {
		Services []FileService `json:"services"`
	}{Services: []FileService{}}
	for _, s := range svcs {
		fs := FileService{Namespace: s.Namespace, Name: s.Name, ClientIPAffinity: s.ClientIPAffinity,
			AffinityTimeout: int32(s.AffinityTimeout.Seconds())}
		for _, ip := range s.ClusterIPs {
			fs.ClusterIPs = append(fs.ClusterIPs, ip.String())
		}
		for _, p := range s.Ports {
			fs.Ports = append(fs.Ports, FilePort{Name: p.Name, Protocol: string(p.Protocol), Port: uint32(p.Port)})
		}
		for _, e := range s.Endpoints {
			fe := FileEndpoint{Hostname: e.Hostname, NodeName: e.NodeName, Ports: map[string]uint32{}}
			for _, a := range e.Addresses {
				fe.Addresses = append(fe.Addresses, a.String())
			}
			for n, p := range e.Ports {
				fe.Ports[n] = uint32(p)
			}
			fs.Endpoints = append(fs.Endpoints, fe)
		}
		f.Services = append(f.Services, fs)
	}
	b, err := json.Marshal(f)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// fileCases are services files; they also seed FuzzLoad.
var fileCases = []struct {
	name    string
	file    string
	refused string // in Load's error; "": loads
}{
	{"the documented example", `{"services": [{"namespace": "demo", "name": "web", "cluster_ips": ["10.96.0.10"],
	  "ports": [{"name": "http", "protocol": "TCP", "port": 80}],
	  "endpoints": [{"addresses": ["10.42.1.5"], "node_name": "edge1", "ports": {"http": 8080}}]}]}`, ""},
	{"no services", `{"services": []}`, ""},
	{"empty object", `{}`, ""},
	{"headless, two endpoints, lower-case and default protocols", `{"services": [{"namespace": "db", "name": "pg",
	  "ports": [{"name": "pg", "protocol": "udp", "port": 5432}, {"name": "pg", "port": 5432}],
	  "endpoints": [{"addresses": ["10.42.2.9"], "hostname": "pg-1", "ports": {"pg": 5432}},
	                {"addresses": ["10.42.1.9", "fd00::9"], "hostname": "pg-0", "ports": {"pg": 5432}}]}]}`, ""},
	{"affinity, dual stack", `{"services": [{"namespace": "a", "name": "b", "cluster_ips": ["10.96.0.11", "fd00:96::11"],
	  "ports": [{"port": 443}], "client_ip_affinity": true, "affinity_timeout_seconds": 600,
	  "endpoints": [{"addresses": ["10.42.1.7"], "ports": {"": 8443}}]}]}`, ""},

	{"not JSON", `services: []`, "invalid character"},
	{"unknown field", `{"services": [{"namespace": "a", "name": "b", "clusterIP": "10.96.0.1"}]}`, "unknown field"},
	{"bad name", `{"services": [{"namespace": "a", "name": "B_1"}]}`, "DNS labels"},
	{"listed twice", `{"services": [{"namespace": "a", "name": "b"}, {"namespace": "a", "name": "b"}]}`, "listed twice"},
	{"bad cluster IP", `{"services": [{"namespace": "a", "name": "b", "cluster_ips": ["10.96.0"]}]}`, "cluster IP"},
	{"unspecified cluster IP", `{"services": [{"namespace": "a", "name": "b", "cluster_ips": ["0.0.0.0"]}]}`, "bad cluster IP"},
	{"port 0", `{"services": [{"namespace": "a", "name": "b", "ports": [{"port": 0}]}]}`, "port 0"},
	{"port over 65535", `{"services": [{"namespace": "a", "name": "b", "ports": [{"port": 65536}]}]}`, "out of range"},
	{"SCTP", `{"services": [{"namespace": "a", "name": "b", "ports": [{"protocol": "SCTP", "port": 9}]}]}`, "not supported"},
	{"endpoint without addresses", `{"services": [{"namespace": "a", "name": "b", "endpoints": [{"ports": {"": 80}}]}]}`, "without addresses"},
	{"endpoint port 0", `{"services": [{"namespace": "a", "name": "b", "endpoints": [{"addresses": ["10.0.0.1"], "ports": {"": 0}}]}]}`, "out of range"},
	{"affinity timeout out of range", `{"services": [{"namespace": "a", "name": "b", "affinity_timeout_seconds": 86401}]}`, "out of range"},
	{"negative port", `{"services": [{"namespace": "a", "name": "b", "ports": [{"port": -1}]}]}`, "cannot unmarshal"},
}

func TestLoad(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range fileCases {
		t.Run(tc.name, func(t *testing.T) {
			svcs, err := loadBytes(t, dir, []byte(tc.file))
			if tc.refused != "" {
				if err == nil || !strings.Contains(err.Error(), tc.refused) || !strings.Contains(err.Error(), "services file ") {
					t.Fatalf("Load: got %v, want an error naming the file and saying %q", err, tc.refused)
				}
				return
			}
			if err != nil {
				t.Fatalf("Load: got %v, want no error", err)
			}
			checkLoaded(t, dir, svcs)
		})
	}
}

func TestLoadNormalises(t *testing.T) {
	svcs, err := loadBytes(t, t.TempDir(), []byte(`{"services": [{"namespace": "db", "name": "pg",
	  "ports": [{"name": "a", "protocol": "udp", "port": 53}, {"name": "b", "port": 80}]}]}`))
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, p := range svcs[0].Ports {
		got = append(got, p.Name+"/"+string(p.Protocol))
	}
	if strings.Join(got, " ") != "a/UDP b/TCP" {
		t.Errorf("ports: got %q, want [a/UDP b/TCP] (protocols upper-cased, TCP by default)", got)
	}
}

// checkLoaded fails t unless svcs, as Load returned them, are valid
// Services with distinct keys that agents accept from the map and that
// survive a write and a second Load unchanged.
func checkLoaded(t *testing.T, dir string, svcs []*services.Service) {
	t.Helper()
	for _, s := range svcs {
		if err := s.Validate(); err != nil {
			t.Fatalf("loaded Service %s does not validate: %v", s.Key(), err)
		}
		if _, err := services.FromProto(services.ToProto(s)); err != nil {
			t.Fatalf("agents refuse loaded Service %s as the map carries it: %v", s.Key(), err)
		}
	}
	if _, err := services.NewTable(svcs); err != nil {
		t.Fatalf("loaded Services do not make a table: %v", err)
	}
	again, err := loadBytes(t, dir, writeFile(t, svcs))
	if err != nil {
		t.Fatalf("Load of the written file: %v", err)
	}
	if !reflect.DeepEqual(again, svcs) {
		t.Errorf("written and loaded again:\ngot  %+v\nwant %+v", again, svcs)
	}
}

// FuzzLoad feeds services files to Load: it must not panic, and whatever
// it accepts must validate and round-trip through a written file.
func FuzzLoad(f *testing.F) {
	for _, tc := range fileCases {
		f.Add([]byte(tc.file))
	}
	dir := f.TempDir()
	f.Fuzz(func(t *testing.T, b []byte) {
		svcs, err := loadBytes(t, dir, b)
		if err != nil {
			return
		}
		checkLoaded(t, dir, svcs)
	})
}
