package netcheck

import (
	"net"
	"net/http"
	"os/exec"
)

func Ping(w http.ResponseWriter, r *http.Request) {
	host := r.URL.Query().Get("host")
	if net.ParseIP(host) == nil {
		http.Error(w, "invalid host", http.StatusBadRequest)
		return
	}
	out, _ := exec.Command("ping", "-c", "1", host).CombinedOutput()
	w.Write(out)
}
