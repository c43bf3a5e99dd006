// Package topoweb is the coordinator's topology page: the fleet's
// connectivity (types/topoview) as a read-only web page with a picture,
// and as JSON for scripts, served on the metrics listener. It exists so an
// operator sees in one place which pairs talk directly and which through a
// relay, and why, without a shell on every node.
//
// Access: requests from a loopback address are served; any other needs
// the coordinator's admin token, as "Authorization: Bearer <token>" or,
// for browsers, a session cookie that the login form sets. Every asset
// is embedded; the page loads nothing from elsewhere.
package topoweb

import (
	"bytes"
	"compress/gzip"
	"crypto/hmac"
	"crypto/sha256"
	"crypto/subtle"
	"embed"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"html/template"
	"io"
	"log/slog"
	"mime"
	"net"
	"net/http"
	"net/netip"
	"path"
	"strconv"
	"strings"
	"time"

	"github.com/edgewire/edgewire/internal/clock"
	"github.com/edgewire/edgewire/types/topoview"
)

// Paths are the patterns (http.ServeMux syntax) the handler serves; the
// coordinator mounts it on each.
var Paths = []string{"/topology", "/topology.json", "/topology/"}

const (
	// CookieName holds a browser's session after the login form.
	CookieName = "edgewire_topology"
	// SessionTTL is how long a login lasts.
	SessionTTL = 12 * time.Hour
	// maxLoginBody bounds the login form.
	maxLoginBody = 4 << 10
	// sessionLabel separates the session MAC from every other use of the
	// admin token's hash.
	sessionLabel = "edgewire topology session v1"
)

// ErrNoView is what a View source returns when this coordinator has no
// view to show (a standby replica, or one still starting).
var ErrNoView = errors.New("no topology here")

// Config configures the handler.
type Config struct {
	// View returns the fleet's connectivity now. An error is shown as
	// 503 with its text (ErrNoView wrapped with why).
	View func() (topoview.View, error)
	// AdminHash is SHA-256 of the admin token (the coordinator keeps only
	// the hash); tokens and session cookies are checked against it.
	AdminHash [32]byte
	Clock     clock.Clock  // session expiry; nil: clock.Real
	Logger    *slog.Logger // nil: discard
}

// Handler serves the page, its JSON and assets, and the login form.
type Handler struct {
	cfg  Config
	tmpl *template.Template
	mux  *http.ServeMux
}

var _ http.Handler = (*Handler)(nil)

//go:embed assets
var assets embed.FS

// New validates cfg and returns the handler.
func New(cfg Config) (*Handler, error) {
	if cfg.View == nil {
		return nil, errors.New("topoweb: no View source")
	}
	if cfg.AdminHash == ([32]byte{}) {
		return nil, errors.New("topoweb: no admin token hash")
	}
	cfg.Clock = clock.Or(cfg.Clock)
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	t, err := template.New("page").Funcs(funcs).ParseFS(assets, "assets/*.tmpl")
	if err != nil {
		return nil, fmt.Errorf("topoweb: templates: %w", err)
	}
	h := &Handler{cfg: cfg, tmpl: t, mux: http.NewServeMux()}
	h.mux.HandleFunc("GET /topology", h.auth(h.page))
	h.mux.HandleFunc("GET /topology.json", h.auth(h.json))
	h.mux.HandleFunc("GET /topology/login", h.loginForm)
	h.mux.HandleFunc("POST /topology/login", h.login)
	h.mux.HandleFunc("GET /topology/assets/{name}", h.asset)
	return h, nil
}

func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	hdr := w.Header()
	// Everything the page uses comes from here: no inline script or
	// style, no frames, nothing from elsewhere.
	hdr.Set("Content-Security-Policy", "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
	hdr.Set("X-Content-Type-Options", "nosniff")
	hdr.Set("Referrer-Policy", "no-referrer")
	h.mux.ServeHTTP(w, r)
}

// access is what a request may see.
type access int

const (
	allowed access = iota
	noCredentials
	badCredentials
)

// check decides a request's access: loopback is open; anything else needs
// the admin token or a session cookie.
func (h *Handler) check(r *http.Request) access {
	if isLoopback(r.RemoteAddr) {
		return allowed
	}
	if v := r.Header.Get("Authorization"); v != "" {
		tok, ok := strings.CutPrefix(v, "Bearer ")
		if ok && h.tokenOK(strings.TrimSpace(tok)) {
			return allowed
		}
		return badCredentials
	}
	if c, err := r.Cookie(CookieName); err == nil {
		if h.sessionOK(c.Value) {
			return allowed
		}
		return badCredentials
	}
	return noCredentials
}

func isLoopback(remote string) bool {
	host, _, err := net.SplitHostPort(remote)
	if err != nil {
		return false
	}
	a, err := netip.ParseAddr(host)
	return err == nil && a.Unmap().IsLoopback()
}

func (h *Handler) tokenOK(tok string) bool {
	sum := sha256.Sum256([]byte(tok))
	return subtle.ConstantTimeCompare(sum[:], h.cfg.AdminHash[:]) == 1
}

// session is a cookie value: "v1.<expiry unix>.<hex MAC>", the MAC keyed
// by the admin token's hash. It opens this page only, never the Admin
// service, and dies with its expiry or a new admin token.
func (h *Handler) session(expiry time.Time) string {
	exp := strconv.FormatInt(expiry.Unix(), 10)
	return "v1." + exp + "." + hex.EncodeToString(h.sessionMAC(exp))
}

func (h *Handler) sessionMAC(exp string) []byte {
	m := hmac.New(sha256.New, h.cfg.AdminHash[:])
	m.Write([]byte(sessionLabel + "\x00" + exp))
	return m.Sum(nil)
}

func (h *Handler) sessionOK(v string) bool {
	rest, ok := strings.CutPrefix(v, "v1.")
	if !ok {
		return false
	}
	exp, macHex, ok := strings.Cut(rest, ".")
	if !ok {
		return false
	}
	sec, err := strconv.ParseInt(exp, 10, 64)
	if err != nil || !h.cfg.Clock.Now().Before(time.Unix(sec, 0)) {
		return false
	}
	mac, err := hex.DecodeString(macHex)
	return err == nil && hmac.Equal(mac, h.sessionMAC(exp))
}

// auth serves next only to requests that check allows; others get 401
// (no credentials: with the login form for a browser) or 403.
func (h *Handler) auth(next http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		switch h.check(r) {
		case allowed:
			next(w, r)
		case noCredentials:
			w.Header().Set("WWW-Authenticate", `Bearer realm="edgewire"`)
			h.refuse(w, r, http.StatusUnauthorized, "the topology page needs the admin token from a non-local address")
		default:
			h.refuse(w, r, http.StatusForbidden, "wrong admin token, or the login has expired")
		}
	}
}

// refuse answers a short text, or the login form with that text when a
// browser asked for the page.
func (h *Handler) refuse(w http.ResponseWriter, r *http.Request, code int, msg string) {
	if r.URL.Path == "/topology" && r.URL.Query().Get("part") == "" && !wantsJSON(r) {
		h.render(w, r, code, "login", loginData{Message: msg})
		return
	}
	http.Error(w, msg, code)
}

type loginData struct{ Message string }

func (h *Handler) loginForm(w http.ResponseWriter, r *http.Request) {
	h.render(w, r, http.StatusOK, "login", loginData{})
}

// login checks the form's token and sets the session cookie.
func (h *Handler) login(w http.ResponseWriter, r *http.Request) {
	r.Body = http.MaxBytesReader(w, r.Body, maxLoginBody)
	if err := r.ParseForm(); err != nil {
		http.Error(w, "bad login form", http.StatusBadRequest)
		return
	}
	if !h.tokenOK(strings.TrimSpace(r.PostForm.Get("token"))) {
		h.cfg.Logger.Warn("topology page login refused", "remote", r.RemoteAddr)
		h.render(w, r, http.StatusForbidden, "login", loginData{Message: "wrong admin token"})
		return
	}
	exp := h.cfg.Clock.Now().Add(SessionTTL)
	http.SetCookie(w, &http.Cookie{Name: CookieName, Value: h.session(exp), Path: "/", Expires: exp,
		HttpOnly: true, SameSite: http.SameSiteStrictMode})
	http.Redirect(w, r, "/topology", http.StatusSeeOther)
}

// wantsJSON: a client that asks for JSON and not HTML (a script's
// "Accept: application/json"; browsers ask for text/html).
func wantsJSON(r *http.Request) bool {
	asksJSON, asksHTML := false, false
	for _, part := range strings.Split(r.Header.Get("Accept"), ",") {
		mt, _, err := mime.ParseMediaType(strings.TrimSpace(part))
		if err != nil {
			continue
		}
		switch mt {
		case "application/json":
			asksJSON = true
		case "text/html":
			asksHTML = true
		}
	}
	return asksJSON && !asksHTML
}

// view reads the view, answering 503 when there is none.
func (h *Handler) view(w http.ResponseWriter) (topoview.View, bool) {
	v, err := h.cfg.View()
	if err != nil {
		http.Error(w, err.Error(), http.StatusServiceUnavailable)
		return v, false
	}
	return v, true
}

func (h *Handler) page(w http.ResponseWriter, r *http.Request) {
	if wantsJSON(r) {
		h.json(w, r)
		return
	}
	v, ok := h.view(w)
	if !ok {
		return
	}
	name := "page"
	if r.URL.Query().Get("part") == "main" {
		name = "main" // the part the page's script swaps in
	}
	h.render(w, r, http.StatusOK, name, build(v))
}

func (h *Handler) json(w http.ResponseWriter, r *http.Request) {
	v, ok := h.view(w)
	if !ok {
		return
	}
	b, err := json.Marshal(v)
	if err != nil {
		http.Error(w, "encode the topology: "+err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	write(w, r, http.StatusOK, append(b, '\n'))
}

// render executes template name into a buffer first, so a template error
// is a clean 500 rather than half a page.
func (h *Handler) render(w http.ResponseWriter, r *http.Request, code int, name string, data any) {
	var buf bytes.Buffer
	if err := h.tmpl.ExecuteTemplate(&buf, name, data); err != nil {
		h.cfg.Logger.Error("topology page", "template", name, "err", err)
		http.Error(w, "render the page: "+err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	write(w, r, code, buf.Bytes())
}

// write sends b, gzipped for clients that take it (a fleet's page or JSON
// is mostly repeated markup and names).
func write(w http.ResponseWriter, r *http.Request, code int, b []byte) {
	w.Header().Add("Vary", "Accept-Encoding")
	if len(b) < 1024 || !strings.Contains(r.Header.Get("Accept-Encoding"), "gzip") {
		w.Header().Set("Content-Length", strconv.Itoa(len(b)))
		w.WriteHeader(code)
		w.Write(b)
		return
	}
	w.Header().Set("Content-Encoding", "gzip")
	w.WriteHeader(code)
	zw, _ := gzip.NewWriterLevel(w, gzip.BestSpeed)
	zw.Write(b)
	zw.Close()
}

func (h *Handler) asset(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	var typ string
	switch path.Ext(name) {
	case ".css":
		typ = "text/css; charset=utf-8"
	case ".js":
		typ = "text/javascript; charset=utf-8"
	default:
		http.NotFound(w, r)
		return
	}
	f, err := assets.Open("assets/" + name)
	if err != nil {
		http.NotFound(w, r)
		return
	}
	defer f.Close()
	b, err := io.ReadAll(f)
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", typ)
	w.Header().Set("Cache-Control", "no-cache")
	write(w, r, http.StatusOK, b)
}
