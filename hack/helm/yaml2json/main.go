// Command yaml2json reads a stream of YAML documents (helm template output)
// on stdin and writes each non-empty document as one line of JSON on
// stdout, so edgewire's Go tests can check rendered manifests with
// encoding/json and keep the main module free of YAML libraries.
package main

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"os"
	"strings"

	"sigs.k8s.io/yaml"
)

func main() {
	in, err := io.ReadAll(os.Stdin)
	if err != nil {
		fmt.Fprintln(os.Stderr, "yaml2json: read stdin:", err)
		os.Exit(1)
	}
	out := bufio.NewWriter(os.Stdout)
	for i, doc := range split(string(in)) {
		js, err := yaml.YAMLToJSONStrict([]byte(doc))
		if err != nil {
			fmt.Fprintf(os.Stderr, "yaml2json: document %d: %v\n%s\n", i+1, err, doc)
			os.Exit(1)
		}
		if bytes.Equal(js, []byte("null")) {
			continue // only comments, e.g. a template that rendered nothing
		}
		out.Write(js)
		out.WriteByte('\n')
	}
	if err := out.Flush(); err != nil {
		fmt.Fprintln(os.Stderr, "yaml2json: write stdout:", err)
		os.Exit(1)
	}
}

// split cuts a YAML stream at its "---" document separators.
func split(s string) []string {
	var docs []string
	var cur strings.Builder
	for line := range strings.SplitAfterSeq(s, "\n") {
		if strings.TrimRight(line, " \t\r\n") == "---" {
			docs = append(docs, cur.String())
			cur.Reset()
			continue
		}
		cur.WriteString(line)
	}
	return append(docs, cur.String())
}
