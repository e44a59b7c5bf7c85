// The test bed's upstream: one small stdlib-only server behind every Traefik replica.
//
// Its responses are chosen to resemble what an agent can confuse with Traefik's own
// "no router matched" 404 (a Go http.NotFound relayed through Traefik), plus the shapes
// the agent must tell apart: WebSocket upgrades, chunked bodies, slow answers (for
// Traefik's 504) and an unhealthy health-check path (for Traefik's 503).
package main

import (
	"bufio"
	"crypto/sha1"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"
)

// RFC 6455 section 1.3: the server proves it read the key by hashing it with this GUID.
const wsGUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

func main() {
	listen := flag.String("listen", "127.0.0.1:0", "address to listen on")
	// With both, it serves HTTPS (crypto/tls): the kernel tests' Go TLS server.
	tlsCert := flag.String("tls-cert", "", "PEM certificate file: serve HTTPS")
	tlsKey := flag.String("tls-key", "", "PEM private key file for -tls-cert")
	flag.Parse()

	mux := http.NewServeMux()
	mux.HandleFunc("/", root)
	mux.HandleFunc("/notfound", func(w http.ResponseWriter, r *http.Request) { http.NotFound(w, r) })
	mux.HandleFunc("/missing", missing)
	mux.HandleFunc("/ws", websocket)
	mux.HandleFunc("/slow", slow)
	mux.HandleFunc("/chunked", chunked)
	mux.HandleFunc("/unhealthy", func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "unhealthy on purpose", http.StatusServiceUnavailable)
	})

	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		log.Fatalf("listen %s: %v", *listen, err)
	}
	// The test bed reads this line to learn the port when it asked for port 0.
	fmt.Fprintf(os.Stdout, "listening %s\n", ln.Addr().String())
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	if *tlsCert != "" {
		log.Fatal(srv.ServeTLS(ln, *tlsCert, *tlsKey))
	}
	log.Fatal(srv.Serve(ln))
}

func root(w http.ResponseWriter, r *http.Request) {
	// Only "/" itself: anything unknown should stay a backend 404, like a real app.
	if r.URL.Path != "/" {
		http.NotFound(w, r)
		return
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	fmt.Fprintf(w, "backend ok host=%s\n", r.Host)
}

// A 404 that a typical application writes itself: not Go's http.NotFound byte pattern.
func missing(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusNotFound)
	io.WriteString(w, `{"error":"no such item"}`)
}

func slow(w http.ResponseWriter, r *http.Request) {
	d := 3 * time.Second
	if ms, err := strconv.Atoi(r.URL.Query().Get("ms")); err == nil && ms >= 0 {
		d = time.Duration(ms) * time.Millisecond
	}
	// Traefik gives up first (responseHeaderTimeout) and cancels the request; return then
	// instead of holding a goroutine for the full delay.
	select {
	case <-time.After(d):
		io.WriteString(w, "slow answer\n")
	case <-r.Context().Done():
	}
}

func chunked(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	f, _ := w.(http.Flusher)
	for i := 0; i < 3; i++ {
		fmt.Fprintf(w, "chunk %d\n", i)
		// Flushing before the handler returns forces Transfer-Encoding: chunked.
		if f != nil {
			f.Flush()
		}
	}
}

func headerHasToken(h http.Header, name, token string) bool {
	for _, v := range h.Values(name) {
		for _, part := range strings.Split(v, ",") {
			if strings.EqualFold(strings.TrimSpace(part), token) {
				return true
			}
		}
	}
	return false
}

func websocket(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet || !headerHasToken(r.Header, "Connection", "upgrade") ||
		!headerHasToken(r.Header, "Upgrade", "websocket") {
		http.Error(w, "websocket upgrade required", http.StatusBadRequest)
		return
	}
	if r.Header.Get("Sec-WebSocket-Version") != "13" {
		w.Header().Set("Sec-WebSocket-Version", "13")
		http.Error(w, "unsupported websocket version", http.StatusUpgradeRequired)
		return
	}
	key := r.Header.Get("Sec-WebSocket-Key")
	if raw, err := base64.StdEncoding.DecodeString(key); err != nil || len(raw) != 16 {
		http.Error(w, "bad Sec-WebSocket-Key", http.StatusBadRequest)
		return
	}
	hj, ok := w.(http.Hijacker)
	if !ok {
		http.Error(w, "hijacking unsupported", http.StatusInternalServerError)
		return
	}
	conn, rw, err := hj.Hijack()
	if err != nil {
		log.Printf("hijack: %v", err)
		return
	}
	defer conn.Close()

	sum := sha1.Sum([]byte(key + wsGUID))
	accept := base64.StdEncoding.EncodeToString(sum[:])
	fmt.Fprintf(rw, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: %s\r\n\r\n", accept)
	if err := rw.Flush(); err != nil {
		return
	}
	if err := echoFrames(rw.Reader, conn); err != nil && !errors.Is(err, io.EOF) {
		log.Printf("websocket: %v", err)
	}
}

// echoFrames sends every data frame back unmasked until the peer closes.
func echoFrames(r *bufio.Reader, w io.Writer) error {
	for {
		var hdr [2]byte
		if _, err := io.ReadFull(r, hdr[:]); err != nil {
			return err
		}
		fin := hdr[0] & 0x80
		opcode := hdr[0] & 0x0f
		masked := hdr[1]&0x80 != 0
		length := uint64(hdr[1] & 0x7f)
		switch length {
		case 126:
			var ext [2]byte
			if _, err := io.ReadFull(r, ext[:]); err != nil {
				return err
			}
			length = uint64(binary.BigEndian.Uint16(ext[:]))
		case 127:
			var ext [8]byte
			if _, err := io.ReadFull(r, ext[:]); err != nil {
				return err
			}
			length = binary.BigEndian.Uint64(ext[:])
		}
		if !masked {
			// RFC 6455 5.1: a server must fail the connection on an unmasked client frame.
			return errors.New("unmasked client frame")
		}
		if length > 1<<20 {
			return fmt.Errorf("frame too large: %d", length)
		}
		var mask [4]byte
		if _, err := io.ReadFull(r, mask[:]); err != nil {
			return err
		}
		payload := make([]byte, length)
		if _, err := io.ReadFull(r, payload); err != nil {
			return err
		}
		for i := range payload {
			payload[i] ^= mask[i%4]
		}
		switch opcode {
		case 0x8: // close: answer with the same status, then stop
			if err := writeFrame(w, 0x80|0x8, payload); err != nil {
				return err
			}
			return nil
		case 0x9: // ping
			if err := writeFrame(w, 0x80|0xA, payload); err != nil {
				return err
			}
		case 0xA: // pong: nothing to do
		default:
			if err := writeFrame(w, fin|opcode, payload); err != nil {
				return err
			}
		}
	}
}

func writeFrame(w io.Writer, first byte, payload []byte) error {
	hdr := []byte{first}
	n := len(payload)
	switch {
	case n < 126:
		hdr = append(hdr, byte(n))
	case n <= 0xffff:
		hdr = append(hdr, 126, byte(n>>8), byte(n))
	default:
		var ext [8]byte
		binary.BigEndian.PutUint64(ext[:], uint64(n))
		hdr = append(hdr, 127)
		hdr = append(hdr, ext[:]...)
	}
	if _, err := w.Write(append(hdr, payload...)); err != nil {
		return err
	}
	return nil
}
