package main

import (
	"errors"
	"fmt"
	"os"
	"slices"
	"strconv"

	"github.com/spf13/pflag"
	"sigs.k8s.io/yaml"
)

// maxConfigFile bounds what is read of a --config file.
const maxConfigFile = 1 << 20

// applyConfigFile sets the flags a configuration file names: a YAML (or
// JSON) mapping whose keys are the flags' names without the dashes, with
// a string, number or boolean value, or a list for a flag that takes
// several (advertise-routes). A flag given on the command line wins over
// the file. An unknown key, or a value of the wrong kind, is an error
// naming it, and nothing of the file is applied.
func applyConfigFile(fs *pflag.FlagSet, path string) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("--config: %w", err)
	}
	if len(b) > maxConfigFile {
		return fmt.Errorf("--config %s is larger than %d bytes", path, maxConfigFile)
	}
	var doc map[string]any
	if err := yaml.Unmarshal(b, &doc); err != nil {
		return fmt.Errorf("--config %s: %w", path, err)
	}
	type setting struct {
		f    *pflag.Flag
		vals []string
	}
	var todo []setting
	var errs []error
	keys := make([]string, 0, len(doc))
	for k := range doc {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		f := fs.Lookup(k)
		if f == nil || k == "config" || k == "help" {
			errs = append(errs, fmt.Errorf("unknown key %q (keys are the flags of edgewire-agent %s, without dashes)", k, "run"))
			continue
		}
		vals, err := configValues(doc[k])
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", k, err))
			continue
		}
		_, isSlice := f.Value.(pflag.SliceValue)
		if len(vals) != 1 && !isSlice {
			errs = append(errs, fmt.Errorf("%s: want one value, not a list", k))
			continue
		}
		if !f.Changed {
			todo = append(todo, setting{f, vals})
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("--config %s: %w", path, errors.Join(errs...))
	}
	// A value a flag refuses undoes the ones set before it: nothing of
	// a bad file is applied.
	var undo []func()
	for _, s := range todo {
		var err error
		if sv, ok := s.f.Value.(pflag.SliceValue); ok {
			old := sv.GetSlice()
			undo = append(undo, func() { sv.Replace(old) })
			err = sv.Replace(s.vals)
		} else {
			old, v := s.f.Value.String(), s.f.Value
			undo = append(undo, func() { v.Set(old) })
			err = v.Set(s.vals[0])
		}
		if err != nil {
			for i := len(undo) - 1; i >= 0; i-- {
				undo[i]()
			}
			for _, t := range todo {
				t.f.Changed = false
			}
			return fmt.Errorf("--config %s: %s: %w", path, s.f.Name, err)
		}
		s.f.Changed = true
	}
	return nil
}

// configValues turns a YAML value into flag values.
func configValues(v any) ([]string, error) {
	switch v := v.(type) {
	case string:
		return []string{v}, nil
	case bool:
		return []string{strconv.FormatBool(v)}, nil
	case float64:
		return []string{strconv.FormatFloat(v, 'f', -1, 64)}, nil
	case int64:
		return []string{strconv.FormatInt(v, 10)}, nil
	case []any:
		out := make([]string, 0, len(v))
		for _, x := range v {
			s, err := configValues(x)
			if err != nil || len(s) != 1 {
				return nil, errors.New("want a list of strings or numbers")
			}
			out = append(out, s[0])
		}
		return out, nil
	case nil:
		return nil, errors.New("no value")
	default:
		return nil, errors.New("want a string, number, boolean or list")
	}
}
