//go:build !windows

package examples_test

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// The shell blocks of README.md and of every README under examples/ run here,
// read from the Markdown itself, so that a documented command cannot drift
// from what pqtunnel does. Each block runs in a temporary directory with the
// test's pqtunnel first in PATH, after the rewrites of blockEnv.rewrites (and
// nothing else); a block that needs what one machine does not have is listed
// in blockSpecs with the reason, and is checked for syntax and variable names.

// blockTimeout bounds one block's run, its daemons' start and stop included.
const blockTimeout = 60 * time.Second

// pinLine is a line that is a pin, as keygen prints it.
const pinLine = `(?m)^pqt1_[a-z2-7]{52}$`

// blockSpec says how the test treats one shell block, found by a text the
// block contains.
type blockSpec struct {
	file, contains string
	// skip, if set, says why the block cannot run on one machine.
	skip string
	// same, if set, is the block's whole text: for a block that another test
	// runs (skip names it).
	same string
	// dir is where the block runs: "" for the file's temporary directory,
	// "repo" for the repository root, or a folder of the repository that is
	// copied into the temporary directory first (the block's "this folder").
	dir string
	// setup makes what the prose before the block says is there.
	setup func(t *testing.T, e *blockEnv)
	// want are regular expressions the block's output must match.
	want []string
	// check, if set, asserts what the block left behind.
	check func(t *testing.T, e *blockEnv)
}

var blockSpecs = []blockSpec{
	{file: "README.md", contains: "go install github.com/pqtunnel/pqtunnel/cmd/pqtunnel@latest",
		skip: "go install fetches from the network, make build and make release write into the repository and build six platforms, docker build needs a Docker engine; TestInstallBlock checks each command's target"},
	{file: "README.md", contains: "make demo",
		skip: "make demo runs until Ctrl-C, and make test is the whole suite this test is part of"},
	{file: "README.md", contains: "keygen -o /etc/pqtunnel/server.id", want: []string{pinLine}},
	{file: "README.md", contains: "keygen -o /etc/pqtunnel/client.id", want: []string{pinLine}},
	{file: "README.md", contains: "redis-cli -h 127.0.0.1 -p 6379 ping",
		setup: startRedis, want: []string{`(?m)^PONG$`}},
	{file: "README.md", contains: "pqtunnel ca init -o /etc/pqtunnel/ca",
		setup: writeMLDSARequest, check: checkCAFiles,
		want: []string{`(?m)^ML-DSA-65 CA "pqtunnel CA" valid until`, `(?m)^ML-DSA-65 certificate for dns:web.internal,uri:spiffe://cluster.local/ns/app/sa/web valid until`}},

	{file: "README.md", contains: "PQT_FORWARD=web=tls://127.0.0.1:8443",
		skip: "runs until stopped and needs the HTTP origin and certificates the prose names; TestTLSTerminatorClassicalCurl and TestTLSTerminatorResumesAndReloads (integration) run this setup"},
	{file: "README.md", contains: "PQT_TARGET=app=tls://127.0.0.1:8443",
		skip: "runs until stopped and needs the terminator above; TestTLSOriginate (integration) runs this setup"},

	{file: "examples/README.md", contains: "go build", dir: "repo",
		check: func(t *testing.T, e *blockEnv) {
			if out, err := exec.Command(filepath.Join(e.dir, "out", "pqtunnel"), "version").CombinedOutput(); err != nil {
				t.Errorf("the binary the build command made does not run: %v\n%s", err, out)
			}
		}},

	{file: "examples/stunnel-redis/README.md", contains: "keygen -o /etc/pqtunnel/listen.id",
		want: []string{`(?m)^pqt1_[a-z2-7]{52}\npqt1_[a-z2-7]{52}$`}},
	{file: "examples/stunnel-redis/README.md", contains: "redis-cli -p 6379 PING",
		setup: func(t *testing.T, e *blockEnv) {
			startRedis(t, e)
			e.copyEnvFile(t, "stunnel-redis/listen.env", "server")
			e.copyEnvFile(t, "stunnel-redis/dial.env", "client")
		},
		want: []string{`(?m)^PONG$`}},
	{file: "examples/stunnel-redis/README.md", same: "bash examples/stunnel-redis/run-local.sh\n",
		skip: "TestStunnelRedis runs this script"},
	{file: "examples/reverse-web/README.md", same: "bash examples/reverse-web/run-local.sh\n",
		skip: "TestReverseWeb runs this script"},

	{file: "examples/docker-compose/README.md", contains: "keygen -o secrets/listen.id", dir: "examples/docker-compose",
		check: checkComposeEnv},
	{file: "examples/docker-compose/README.md", contains: "docker compose up",
		skip: "needs a Docker engine and root (sudo chown); TestDockerComposeConfig validates the file"},
	{file: "examples/docker-compose/README.md", contains: "docker compose logs",
		skip: "needs the running compose project"},
	{file: "examples/docker-compose/README.md", contains: "docker compose exec",
		skip: "needs the running compose project"},
	{file: "examples/docker-compose/README.md", contains: "docker compose down",
		skip: "needs the running compose project"},

	{file: "examples/kubernetes/README.md", contains: "kubectl apply",
		skip: "needs a Kubernetes cluster (kubectl); TestKubernetes checks the manifests"},
	{file: "examples/kubernetes-relays/README.md", contains: "kubectl apply",
		skip: "needs a Kubernetes cluster (kubectl); TestKubernetesRelays checks the manifests, TestDialSideSpreadsOverEveryAddressOfTheName (integration) the behaviour"},

	{file: "examples/systemd/README.md", contains: "systemctl enable",
		skip: "installs into /usr/local/bin and /etc/systemd and starts a service: needs systemd as init"},
	{file: "examples/systemd/README.md", contains: "sysctl --system",
		skip: "changes the host kernel's UDP buffer limits"},
	{file: "examples/systemd/README.md", contains: "systemd-analyze verify",
		skip: "TestSystemdUnit runs systemd-analyze verify on a copy of the unit that names the test's binary"},
}

// docBlock is one ```sh block of a Markdown file.
type docBlock struct {
	file string // relative to the repository root
	line int    // of the opening fence
	text string
}

// shellBlocks returns the ```sh blocks of a Markdown file.
func shellBlocks(t *testing.T, file string) []docBlock {
	t.Helper()
	var blocks []docBlock
	var cur *docBlock
	for i, l := range strings.Split(readFile(t, filepath.Join(repoRoot, file)), "\n") {
		switch {
		case cur == nil && l == "```sh":
			cur = &docBlock{file: file, line: i + 1}
		case cur != nil && l == "```":
			blocks = append(blocks, *cur)
			cur = nil
		case cur != nil:
			cur.text += l + "\n"
		}
	}
	if cur != nil {
		t.Fatalf("%s:%d: a ```sh block is not closed", file, cur.line)
	}
	return blocks
}

// docFiles are the Markdown files whose shell blocks the test runs.
func docFiles(t *testing.T) []string {
	t.Helper()
	files := []string{"README.md", "examples/README.md"}
	more, err := filepath.Glob(filepath.Join(repoRoot, "examples", "*", "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range more {
		rel, err := filepath.Rel(repoRoot, f)
		if err != nil {
			t.Fatal(err)
		}
		files = append(files, rel)
	}
	return files
}

// specFor returns the index in blockSpecs of the one spec that matches b,
// failing the test if there is none or more than one.
func specFor(t *testing.T, b docBlock) (int, bool) {
	t.Helper()
	var found []int
	for i, s := range blockSpecs {
		if s.file == b.file && ((s.same != "" && s.same == b.text) || (s.contains != "" && strings.Contains(b.text, s.contains))) {
			found = append(found, i)
		}
	}
	switch len(found) {
	case 1:
		return found[0], true
	case 0:
		t.Errorf("%s:%d: this shell block has no entry in blockSpecs: add one that runs it, or that says why it cannot run:\n%s", b.file, b.line, b.text)
	default:
		t.Errorf("%s:%d: %d entries of blockSpecs match this block", b.file, b.line, len(found))
	}
	return 0, false
}

// TestReadmeShellBlocks runs every shell block of the READMEs that can run
// on one machine, in the order of each file, and asserts its documented
// outcome; every block, run or not, must pass 'bash -n' and name only
// variables that 'pqtunnel help' lists.
func TestReadmeShellBlocks(t *testing.T) {
	requireTools(t, "bash", "curl", "redis-server", "redis-cli")
	known := helpVariables(t)
	ref := regexp.MustCompile(`PQT_[A-Z0-9_]+`)
	used := make([]int, len(blockSpecs))
	for _, file := range docFiles(t) {
		blocks := shellBlocks(t, file)
		t.Run(file, func(t *testing.T) {
			e := newBlockEnv(t)
			for _, b := range blocks {
				for _, name := range ref.FindAllString(b.text, -1) {
					if !known[name] {
						t.Errorf("%s:%d: %s is not a variable that 'pqtunnel help' lists", b.file, b.line, name)
					}
				}
				if out, err := exec.Command("bash", "-n", "-c", b.text).CombinedOutput(); err != nil {
					t.Errorf("%s:%d: bash -n: %v\n%s", b.file, b.line, err, out)
				}
				i, ok := specFor(t, b)
				if !ok {
					continue
				}
				used[i]++
				spec := blockSpecs[i]
				if spec.skip != "" {
					t.Logf("%s:%d: not run: %s", b.file, b.line, spec.skip)
					continue
				}
				t.Run("line"+strconv.Itoa(b.line), func(t *testing.T) { e.run(t, b, spec) })
			}
		})
	}
	for i, n := range used {
		if n != 1 {
			t.Errorf("blockSpecs entry for %s %q matched %d blocks, want 1", blockSpecs[i].file, blockSpecs[i].contains+blockSpecs[i].same, n)
		}
	}
}

// blockEnv is the state that the blocks of one Markdown file share: the
// temporary directory standing for both hosts, and the ports that stand for
// the documented ones.
type blockEnv struct {
	dir string
	// tunnel stands for 8443; redis for the server host's 6379 and forward
	// for the client host's 6379, which on one machine must differ.
	tunnel, redis, forward int
	// daemons counts the pqtunnel processes started, for their log names.
	daemons int
}

func newBlockEnv(t *testing.T) *blockEnv {
	p := freePorts(t, 3)
	return &blockEnv{dir: t.TempDir(), tunnel: p[0], redis: p[1], forward: p[2]}
}

// etc stands for /etc/pqtunnel.
func (e *blockEnv) etc() string { return filepath.Join(e.dir, "etc", "pqtunnel") }

// rewrites is the whole substitution table: what a block on one machine
// must change, for a line on the given host ("server", "client" or "").
// Pin placeholders become the pin of the identity file the docs name.
func (e *blockEnv) rewrites(t *testing.T, host string) []string {
	t.Helper()
	r := []string{
		"sudo ", "", // the test runs as whoever runs it
		"/etc/pqtunnel", e.etc(),
		"/out/", filepath.Join(e.dir, "out") + "/",
		"server.example.com", "127.0.0.1",
		"<HOST A ADDRESS, e.g. redis-a.example.net>", "127.0.0.1",
		"0.0.0.0", "127.0.0.1", // the tests bind loopback only
		"8443", strconv.Itoa(e.tunnel),
	}
	for placeholder, id := range map[string]string{
		"pqt1_<client pin>":         "client.id",
		"pqt1_<server pin>":         "server.id",
		"<PIN OF HOST A, pqt1_...>": "listen.id",
		"<PIN OF HOST B, pqt1_...>": "dial.id",
	} {
		r = append(r, placeholder, e.pin(t, id))
	}
	switch host {
	case "server":
		r = append(r, "6379", strconv.Itoa(e.redis))
	case "client":
		r = append(r, "6379", strconv.Itoa(e.forward))
	}
	return r
}

// pin returns the pin of an identity under etc, or a text that names the
// missing file (so that a block using it fails saying why).
func (e *blockEnv) pin(t *testing.T, id string) string {
	t.Helper()
	path := filepath.Join(e.etc(), id)
	if _, err := os.Stat(path); err != nil {
		return "pqt1_MISSING_" + id
	}
	out, err := exec.Command(pqtunnelBin, "pin", path).Output()
	if err != nil {
		t.Fatalf("pqtunnel pin %s: %v", path, err)
	}
	return strings.TrimSpace(string(out))
}

// hostComment finds which host a comment speaks of.
var hostComment = regexp.MustCompile(`\b(server host|host A|client host|host B)\b`)

func hostOf(comment string) string {
	switch hostComment.FindString(comment) {
	case "server host", "host A":
		return "server"
	case "client host", "host B":
		return "client"
	}
	return ""
}

// daemonCommand is a command that runs pqtunnel itself (no subcommand),
// which the docs run in the foreground on its own host.
var daemonCommand = regexp.MustCompile(`(^|[\s;])pqtunnel$`)

// trailingComment is a shell comment at the end of a line.
var trailingComment = regexp.MustCompile(`(^|\s)#\s.*$`)

// script turns a block into the bash script the test runs: the rewrites
// applied line by line, and each pqtunnel daemon started in the background
// (in its own subshell, as on its own host) with PQT_METRICS set so that
// the script can wait for its /readyz before going on. All daemons are
// stopped when the script exits.
func (e *blockEnv) script(t *testing.T, b docBlock) string {
	t.Helper()
	var s strings.Builder
	s.WriteString(`set -euo pipefail
pids=()
stop() { for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done; for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done; }
trap stop EXIT
wait_ready() {
  local end=$((SECONDS + 20))
  while ((SECONDS < end)); do
    curl -fsS --max-time 1 -o /dev/null "$1" 2>/dev/null && return 0
    kill -0 "$3" 2>/dev/null || { echo "pqtunnel exited:"; cat "$2"; exit 1; }
    sleep 0.1
  done
  echo "not ready: $1"; cat "$2"; exit 1
}
`)
	section := ""
	lines := strings.Split(strings.TrimSuffix(b.text, "\n"), "\n")
	for i := 0; i < len(lines); i++ {
		cmd := lines[i]
		for strings.HasSuffix(cmd, "\\") && i+1 < len(lines) {
			i++
			cmd += "\n" + lines[i]
		}
		last := cmd[strings.LastIndex(cmd, "\n")+1:]
		comment := trailingComment.FindString(last)
		host := hostOf(comment)
		if strings.TrimSpace(cmd) == strings.TrimSpace(comment) {
			if host != "" {
				section = host
			}
			continue
		}
		if host == "" {
			host = section
		}
		cmd = strings.NewReplacer(e.rewrites(t, host)...).Replace(strings.TrimSuffix(cmd, comment))
		cmd = strings.TrimRight(cmd, " \t")
		if !daemonCommand.MatchString(cmd) {
			s.WriteString(cmd + "\n")
			continue
		}
		e.daemons++
		port := freePorts(t, 1)[0]
		log := filepath.Join(e.dir, fmt.Sprintf("pqtunnel-%d.log", e.daemons))
		url := fmt.Sprintf("http://127.0.0.1:%d/readyz", port)
		cmd = strings.TrimSuffix(cmd, "pqtunnel") + fmt.Sprintf("PQT_METRICS=127.0.0.1:%d pqtunnel", port)
		fmt.Fprintf(&s, "( %s ) >%q 2>&1 &\npids+=($!)\nwait_ready %q %q \"$!\"\n", cmd, log, url, log)
	}
	return s.String()
}

// run runs one block as spec says and checks its outcome.
func (e *blockEnv) run(t *testing.T, b docBlock, spec blockSpec) {
	dir := e.dir
	switch spec.dir {
	case "":
	case "repo":
		dir = repoRoot
	default:
		dir = filepath.Join(e.dir, filepath.Base(spec.dir))
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		entries, err := os.ReadDir(filepath.Join(repoRoot, spec.dir))
		if err != nil {
			t.Fatal(err)
		}
		for _, en := range entries {
			if en.Type().IsRegular() {
				copyFile(t, filepath.Join(repoRoot, spec.dir, en.Name()), filepath.Join(dir, en.Name()), 0o644)
			}
		}
	}
	if spec.setup != nil {
		spec.setup(t, e)
	}
	script := e.script(t, b)
	t.Cleanup(func() {
		if !t.Failed() {
			return
		}
		t.Logf("the script run for %s:%d:\n%s", b.file, b.line, script)
		logs, _ := filepath.Glob(filepath.Join(e.dir, "pqtunnel-*.log"))
		for _, l := range logs {
			t.Logf("%s:\n%s", l, readFile(t, l))
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), blockTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "bash", "-c", script)
	cmd.Dir = dir
	cmd.Env = append(cleanEnv(), "PATH="+filepath.Dir(pqtunnelBin)+string(os.PathListSeparator)+os.Getenv("PATH"))
	out := runInGroup(t, fmt.Sprintf("%s:%d", b.file, b.line), cmd, ctx)
	for _, w := range spec.want {
		if !regexp.MustCompile(w).MatchString(out) {
			t.Errorf("%s:%d: the output does not match %s:\n%s", b.file, b.line, w, out)
		}
	}
	if spec.check != nil {
		spec.check(t, e)
	}
}

// copyEnvFile does what the docs ask before running an env file: copy it to
// /etc/pqtunnel and fill in its placeholders, with the host's rewrites.
func (e *blockEnv) copyEnvFile(t *testing.T, file, host string) {
	t.Helper()
	text := strings.NewReplacer(e.rewrites(t, host)...).Replace(readFile(t, file))
	for _, l := range strings.Split(text, "\n") {
		if !strings.HasPrefix(l, "#") && (strings.Contains(l, "<") || strings.Contains(l, "MISSING")) {
			t.Fatalf("%s: a placeholder is left after the rewrites: %s", file, l)
		}
	}
	if err := os.WriteFile(filepath.Join(e.etc(), filepath.Base(file)), []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
}

// startRedis starts the Redis that the docs assume on the server host, on
// the port that stands for its 6379, and waits until it answers.
func startRedis(t *testing.T, e *blockEnv) {
	t.Helper()
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		t.Fatal(err)
	}
	startProcess(t, []string{"HOME=" + e.dir}, nil, bin,
		"--bind", "127.0.0.1", "--port", strconv.Itoa(e.redis), "--dir", e.dir, "--save", "", "--appendonly", "no")
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := net.Dial("tcp", "127.0.0.1:"+strconv.Itoa(e.redis))
		if err == nil {
			c.Close()
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("redis-server did not listen on %d within 10 s: %v", e.redis, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// checkComposeEnv checks what the compose README's keygen block leaves: two
// identities of mode 0600 and an .env that docker-compose accepts.
func checkComposeEnv(t *testing.T, e *blockEnv) {
	dir := filepath.Join(e.dir, "docker-compose")
	for _, id := range []string{"listen.id", "dial.id"} {
		st, err := os.Stat(filepath.Join(dir, "secrets", id))
		if err != nil {
			t.Fatal(err)
		}
		if st.Mode().Perm() != 0o600 {
			t.Errorf("secrets/%s has mode %#o, want 0600", id, st.Mode().Perm())
		}
	}
	env := readFile(t, filepath.Join(dir, ".env"))
	if !regexp.MustCompile(`^COMPOSE_PROJECT_NAME=pqtunnel-example\nLISTEN_PIN=pqt1_[a-z2-7]{52}\nDIAL_PIN=pqt1_[a-z2-7]{52}\n$`).MatchString(env) {
		t.Errorf(".env is not the project name and two pins:\n%s", env)
	}
	cmd := exec.Command("docker-compose", "config", "-q")
	cmd.Dir = dir
	cmd.Env = cleanEnv()
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Errorf("docker-compose config with the .env the block wrote: %v\n%s", err, out)
	}
}
