package controlplane

import (
	"fmt"
	"io"
	"net"
	"net/url"
	"sync"

	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
)

// Proxy forwards TCP connections to the API server and can cut them: an
// outage, as a client sees one, without stopping the server (whose
// graceful shutdown waits on every open watch).
type Proxy struct {
	target string
	addr   string
	// listen makes the listening socket (in a network namespace, for
	// NewProxyIn).
	listen func(addr string) (net.Listener, error)

	mu    sync.Mutex
	ln    net.Listener
	conns map[net.Conn]bool
}

// NewProxy listens on a loopback port and forwards to the API server.
func (c *ControlPlane) NewProxy() (*Proxy, error) {
	return c.NewProxyIn(func(fn func() error) error { return fn() })
}

// NewProxyIn is NewProxy with its listening socket made inside do (a
// network namespace's Do): processes in that namespace reach the API
// server on the proxy's loopback address, which its certificate names.
// The connections to the server are made from this namespace.
func (c *ControlPlane) NewProxyIn(do func(func() error) error) (*Proxy, error) {
	u, err := url.Parse(c.Config.Host)
	if err != nil || u.Host == "" {
		return nil, fmt.Errorf("proxy: API server address %q: not a URL", c.Config.Host)
	}
	p := &Proxy{target: u.Host, conns: map[net.Conn]bool{}}
	p.listen = func(addr string) (ln net.Listener, err error) {
		err = do(func() error {
			ln, err = net.Listen("tcp", addr)
			return err
		})
		return ln, err
	}
	ln, err := p.listen("127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("proxy: %w", err)
	}
	p.addr = ln.Addr().String()
	p.serve(ln)
	return p, nil
}

// Config returns a copy of cfg that goes through the proxy.
func (p *Proxy) Config(cfg *rest.Config) *rest.Config {
	out := rest.CopyConfig(cfg)
	out.Host = "https://" + p.addr
	return out
}

// Kubeconfig rewrites a kubeconfig to reach the API server through the
// proxy.
func (p *Proxy) Kubeconfig(kubeconfig []byte) ([]byte, error) {
	cfg, err := clientcmd.Load(kubeconfig)
	if err != nil {
		return nil, fmt.Errorf("proxy: kubeconfig: %w", err)
	}
	for _, cluster := range cfg.Clusters {
		cluster.Server = "https://" + p.addr
	}
	return clientcmd.Write(*cfg)
}

// Cut closes every connection and refuses new ones until Restore.
func (p *Proxy) Cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.ln != nil {
		p.ln.Close()
		p.ln = nil
	}
	for c := range p.conns {
		c.Close()
	}
}

// Restore accepts connections again, on the same address.
func (p *Proxy) Restore() error {
	ln, err := p.listen(p.addr)
	if err != nil {
		return fmt.Errorf("proxy: listen again on %s: %w", p.addr, err)
	}
	p.serve(ln)
	return nil
}

// Close cuts everything for good.
func (p *Proxy) Close() { p.Cut() }

func (p *Proxy) serve(ln net.Listener) {
	p.mu.Lock()
	p.ln = ln
	p.mu.Unlock()
	go func() {
		for {
			in, err := ln.Accept()
			if err != nil {
				return
			}
			out, err := net.Dial("tcp", p.target)
			if err != nil {
				in.Close()
				continue
			}
			p.mu.Lock()
			p.conns[in], p.conns[out] = true, true
			p.mu.Unlock()
			go p.pipe(in, out)
			go p.pipe(out, in)
		}
	}()
}

func (p *Proxy) pipe(dst, src net.Conn) {
	io.Copy(dst, src) // ends when either side closes, or Cut closes both
	dst.Close()
	src.Close()
	p.mu.Lock()
	delete(p.conns, dst)
	delete(p.conns, src)
	p.mu.Unlock()
}
