package api

// MaxVersionLen bounds the agent version a node reports (Hello.version)
// and the map carries (Node.version).
const MaxVersionLen = 64

// ValidVersion reports whether v can stand as an agent version in maps
// and listings: at most MaxVersionLen bytes of printable ASCII without
// spaces (what `git describe` and Go module versions are made of), so a
// version is one column in a table and cannot carry control characters
// into a terminal or a log. Empty is valid: no version reported.
func ValidVersion(v string) bool {
	if len(v) > MaxVersionLen {
		return false
	}
	for i := 0; i < len(v); i++ {
		if v[i] <= ' ' || v[i] > '~' {
			return false
		}
	}
	return true
}
