//go:build !windows

// Package examples_test keeps the examples and the READMEs working and in
// step with pqtunnel: it runs the run-local.sh scripts and the READMEs' shell
// blocks, validates the compose file with docker-compose, parses the
// Kubernetes YAML, checks the systemd unit, runs pqtunnel on an identity laid
// out as a Kubernetes Secret, and checks that every PQT_* variable the
// examples name is one that 'pqtunnel help' prints. It builds on Unix only:
// the scripts and README blocks need a Unix shell, and the Secret test runs
// pqtunnel as another user.
package examples_test

import (
	"bufio"
	"bytes"
	"context"
	"debug/elf"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.yaml.in/yaml/v2"

	"github.com/pqtunnel/pqtunnel/internal/childproc"
)

// buildCommand is how the Dockerfile and CI-style builds make the binary;
// examples/README.md quotes it too.
const buildCommand = `CGO_ENABLED=0 go build -trimpath -ldflags="-s -w" -o /out/pqtunnel ./cmd/pqtunnel`

// scriptTimeout bounds one run-local.sh, its own build of pqtunnel included.
const scriptTimeout = 90 * time.Second

var (
	// repoRoot is the module root, the parent of examples/.
	repoRoot string
	// pqtunnelBin is built once by TestMain with buildCommand's flags.
	pqtunnelBin string
)

func TestMain(m *testing.M) {
	os.Exit(runMain(m))
}

func runMain(m *testing.M) int {
	root, err := filepath.Abs("..")
	if err != nil {
		fmt.Fprintln(os.Stderr, "examples:", err)
		return 1
	}
	repoRoot = root
	dir, err := os.MkdirTemp("", "pqtunnel-examples-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "examples:", err)
		return 1
	}
	defer os.RemoveAll(dir)
	pqtunnelBin = filepath.Join(dir, "pqtunnel")
	// The same flags as buildCommand, so that the scripts' own builds of
	// pqtunnel find everything in the build cache.
	cmd := exec.Command("go", "build", "-trimpath", "-ldflags=-s -w", "-o", pqtunnelBin, "./cmd/pqtunnel")
	cmd.Dir = repoRoot
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "examples: %s: %v\n%s", buildCommand, err, out)
		return 1
	}
	return m.Run()
}

// TestBuildCommand checks that the Dockerfile and examples/README.md give the
// same build command, that the Dockerfile has the shape the examples rely on,
// and that the command makes a static binary, as distroless/static needs.
func TestBuildCommand(t *testing.T) {
	dockerfile := readFile(t, filepath.Join(repoRoot, "Dockerfile"))
	for _, want := range []string{
		"RUN " + buildCommand,
		"FROM gcr.io/distroless/static-debian12:nonroot",
		"EXPOSE 8443/udp 8443/tcp",
		`ENTRYPOINT ["/pqtunnel"]`,
	} {
		if !strings.Contains(dockerfile, want) {
			t.Errorf("Dockerfile lacks %q", want)
		}
	}
	if regexp.MustCompile(`(?m)^\s*(HEALTHCHECK|CMD|SHELL)\b`).MatchString(dockerfile) {
		t.Error("Dockerfile has HEALTHCHECK, CMD or SHELL: the distroless image has no shell, and pqtunnel is configured by environment only")
	}
	if !strings.Contains(readFile(t, "README.md"), buildCommand) {
		t.Errorf("examples/README.md lacks the build command %q", buildCommand)
	}
	for _, name := range []string{".git", "examples", "integration"} {
		if !slices.Contains(strings.Fields(readFile(t, filepath.Join(repoRoot, ".dockerignore"))), name) {
			t.Errorf(".dockerignore does not exclude %s", name)
		}
	}

	f, err := elf.Open(pqtunnelBin)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			t.Error("the binary built with the Dockerfile's command has an ELF interpreter: it is not static")
		}
	}
	if libs, err := f.ImportedLibraries(); err != nil {
		t.Fatal(err)
	} else if len(libs) > 0 {
		t.Errorf("the binary built with the Dockerfile's command needs shared libraries %v: it is not static", libs)
	}
}

// helpVariables runs 'pqtunnel help' and returns the PQT_* names it lists.
func helpVariables(t *testing.T) map[string]bool {
	t.Helper()
	out, err := exec.Command(pqtunnelBin, "help").CombinedOutput()
	if err != nil {
		t.Fatalf("pqtunnel help: %v\n%s", err, out)
	}
	names := map[string]bool{}
	for _, m := range regexp.MustCompile(`(?m)^\s+(PQT_[A-Z0-9_]+)\s`).FindAllStringSubmatch(string(out), -1) {
		names[m[1]] = true
	}
	if len(names) < 10 || !names["PQT_MODE"] {
		t.Fatalf("could not read the variables from 'pqtunnel help':\n%s", out)
	}
	return names
}

// TestVariablesExist checks that every PQT_* variable named under examples/
// (and in the Dockerfile) is one that 'pqtunnel help' prints.
func TestVariablesExist(t *testing.T) {
	known := helpVariables(t)
	ref := regexp.MustCompile(`PQT_[A-Z0-9_]+`)
	files := exampleFiles(t)
	files = append(files, filepath.Join(repoRoot, "Dockerfile"))
	used := map[string]bool{}
	for _, path := range files {
		for i, line := range strings.Split(readFile(t, path), "\n") {
			for _, name := range ref.FindAllString(line, -1) {
				used[name] = true
				if !known[name] {
					t.Errorf("%s:%d: %s is not a variable that 'pqtunnel help' lists", path, i+1, name)
				}
			}
		}
	}
	if len(used) < 10 {
		t.Errorf("only %d PQT_* variables found under examples/: the scan is broken", len(used))
	}
}

// TestEnvFiles checks that every .env file is plain KEY=VALUE lines, which
// systemd's EnvironmentFile=, 'docker run --env-file' and 'set -a; .' all
// read the same way, and that the unit's stop timeout outlasts the drain.
func TestEnvFiles(t *testing.T) {
	line := regexp.MustCompile(`^PQT_[A-Z0-9_]+=[^"'\s].*$`)
	var envFiles []string
	for _, path := range exampleFiles(t) {
		if !strings.HasSuffix(path, ".env") {
			continue
		}
		envFiles = append(envFiles, path)
		env := map[string]string{}
		for i, l := range strings.Split(readFile(t, path), "\n") {
			if l == "" || strings.HasPrefix(l, "#") {
				continue
			}
			if !line.MatchString(l) {
				t.Errorf("%s:%d: %q is not a KEY=value line for a PQT_ variable (no spaces around =, no quotes)", path, i+1, l)
				continue
			}
			k, v, _ := strings.Cut(l, "=")
			if _, dup := env[k]; dup {
				t.Errorf("%s:%d: %s is set twice", path, i+1, k)
			}
			env[k] = v
		}
		if mode := env["PQT_MODE"]; mode != "listen" && mode != "dial" {
			t.Errorf("%s: PQT_MODE is %q, want listen or dial", path, mode)
		}
		if env["PQT_FORWARD"] == "" && env["PQT_TARGET"] == "" {
			t.Errorf("%s: neither PQT_FORWARD nor PQT_TARGET is set", path)
		}
		if filepath.Base(filepath.Dir(path)) == "systemd" {
			if _, ok := env["PQT_IDENTITY"]; ok {
				t.Errorf("%s: sets PQT_IDENTITY, which would override the unit's credential path", path)
			}
			if d := env["PQT_DRAIN_TIMEOUT"]; d != "" {
				drain, err := time.ParseDuration(d)
				if err != nil {
					t.Errorf("%s: PQT_DRAIN_TIMEOUT=%s: %v", path, d, err)
				} else if stop := unitDuration(t, "TimeoutStopSec"); stop <= drain {
					t.Errorf("%s: PQT_DRAIN_TIMEOUT=%s is not below the unit's TimeoutStopSec=%s", path, drain, stop)
				}
			}
		}
	}
	if len(envFiles) < 8 {
		t.Errorf("found only %d .env files under examples/", len(envFiles))
	}
}

// TestScriptsUseLoopbackOnly checks that the run-local.sh scripts and the
// lib.sh they source (every .sh file under examples/) name no address but
// 127.0.0.1.
func TestScriptsUseLoopbackOnly(t *testing.T) {
	ip := regexp.MustCompile(`\b\d{1,3}(\.\d{1,3}){3}\b`)
	var scripts []string
	for _, path := range exampleFiles(t) {
		if strings.HasSuffix(path, ".sh") {
			scripts = append(scripts, path)
		}
	}
	for _, want := range []string{"lib.sh", filepath.Join("stunnel-redis", "run-local.sh"), filepath.Join("reverse-web", "run-local.sh")} {
		if !slices.Contains(scripts, want) {
			t.Errorf("%s is not among the scripts checked %v", want, scripts)
		}
	}
	for _, script := range scripts {
		for i, l := range strings.Split(readFile(t, script), "\n") {
			for _, addr := range ip.FindAllString(l, -1) {
				if addr != "127.0.0.1" {
					t.Errorf("%s:%d: address %s: the scripts use 127.0.0.1 only", script, i+1, addr)
				}
			}
			if strings.Contains(l, "localhost") || strings.Contains(l, "[::") {
				t.Errorf("%s:%d: the scripts use 127.0.0.1 only: %s", script, i+1, l)
			}
		}
	}
}

// TestStunnelRedis runs examples/stunnel-redis/run-local.sh: Redis behind a
// listen side, redis-cli through a dial side.
func TestStunnelRedis(t *testing.T) {
	for _, tool := range []string{"redis-server", "redis-cli"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s is not installed: this test needs redis-server and redis-cli; CI installs them (.ci/run: apt-get install redis-server redis-tools)", tool)
		}
	}
	requireTools(t, "bash", "curl", "python3", "go")
	out := runScript(t, "stunnel-redis/run-local.sh")
	for _, want := range []string{"PING: PONG", "SET/GET through the tunnel: OK", "PASS: stunnel-redis"} {
		if !strings.Contains(out, want) {
			t.Errorf("the script's output lacks %q:\n%s", want, out)
		}
	}
}

// TestReverseWeb runs examples/reverse-web/run-local.sh: python3's
// http.server behind a dial side, curl through the relay's listen side.
func TestReverseWeb(t *testing.T) {
	requireTools(t, "bash", "curl", "python3", "go")
	out := runScript(t, "reverse-web/run-local.sh")
	for _, want := range []string{"refuses visitors at once", "1 MiB, byte for byte", "PASS: reverse-web"} {
		if !strings.Contains(out, want) {
			t.Errorf("the script's output lacks %q:\n%s", want, out)
		}
	}
}

func requireTools(t *testing.T, tools ...string) {
	t.Helper()
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s is not installed: scripts/test-deps installs what the tests need", tool)
		}
	}
}

// runScript runs a script with bash in its own process group, without any
// PQT_* variable of the test's environment, and returns its output. It fails
// the test if the script fails, runs past scriptTimeout, or leaves a process
// of its group running.
func runScript(t *testing.T, script string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), scriptTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "bash", script)
	cmd.Env = cleanEnv()
	return runInGroup(t, script, cmd, ctx)
}

// cleanEnv is the test's environment without PQT_* variables, PQTUNNEL_BIN
// and compose's variables, so that only what a script sets reaches pqtunnel.
func cleanEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "PQT_") && !strings.HasPrefix(kv, "PQTUNNEL_BIN=") && !strings.HasPrefix(kv, "COMPOSE_") {
			env = append(env, kv)
		}
	}
	return env
}

// runInGroup runs cmd, made with ctx, in its own process group and returns
// its output. It fails the test if cmd fails, runs past ctx's deadline, or
// leaves a process of its group running.
func runInGroup(t *testing.T, name string, cmd *exec.Cmd, ctx context.Context) string {
	t.Helper()
	var out bytes.Buffer
	cmd.Stdout = &out
	cmd.Stderr = &out
	// The script and everything it starts share one process group, so that a
	// timeout kills all of them, not just bash.
	cmd.SysProcAttr = childproc.Attr(true)
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 10 * time.Second
	start := time.Now()
	err := cmd.Run()
	elapsed := time.Since(start).Round(time.Millisecond)
	if cmd.Process != nil {
		pgid := cmd.Process.Pid
		if kerr := syscall.Kill(-pgid, 0); !errors.Is(kerr, syscall.ESRCH) {
			_ = syscall.Kill(-pgid, syscall.SIGKILL) // the test failed anyway
			t.Errorf("%s left processes running after it exited", name)
		}
	}
	if ctx.Err() != nil {
		t.Logf("%s output:\n%s", name, out.String())
		t.Fatalf("%s did not finish in time", name)
	}
	if err != nil {
		t.Logf("%s output:\n%s", name, out.String())
		t.Fatalf("%s failed after %s: %v", name, elapsed, err)
	}
	if t.Failed() {
		t.Logf("%s output:\n%s", name, out.String())
	}
	return out.String()
}

// composeFile is the part of docker-compose.yml that the test checks.
type composeFile struct {
	Services map[string]composeService `yaml:"services"`
	Networks map[string]struct {
		Internal bool `yaml:"internal"`
	} `yaml:"networks"`
	Secrets map[string]struct {
		File string `yaml:"file"`
	} `yaml:"secrets"`
}

type composeService struct {
	Image       string            `yaml:"image"`
	Build       interface{}       `yaml:"build"`
	Environment map[string]string `yaml:"environment"`
	Secrets     []string          `yaml:"secrets"`
	Networks    []string          `yaml:"networks"`
	NetworkMode string            `yaml:"network_mode"`
	Healthcheck interface{}       `yaml:"healthcheck"`
	DependsOn   []string          `yaml:"depends_on"`
	StopGrace   string            `yaml:"stop_grace_period"`
}

// composeSpec is the validator of github.com/compose-spec/compose-go, the
// loader of the Compose v2 plugin ('docker compose'), run with 'go run' from
// the Go module proxy (or the module cache) as staticcheck is.
const composeSpec = "github.com/compose-spec/compose-go/v2/cmd@v2.17.0"

// TestComposeSpec validates docker-compose.yml against the Compose
// Specification as the v2 plugin loads it. Its command-line validator does
// not interpolate from the environment, so ${...} stays as written here;
// TestDockerComposeConfig checks the interpolation.
func TestComposeSpec(t *testing.T) {
	requireTools(t, "go")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "go", "run", composeSpec, "-no-interpolation", "-format", "json", "docker-compose.yml")
	cmd.Dir = "docker-compose"
	cmd.Env = cleanEnv()
	out, err := cmd.Output()
	if err != nil {
		var stderr []byte
		var exit *exec.ExitError
		if errors.As(err, &exit) {
			stderr = exit.Stderr
		}
		t.Fatalf("go run %s docker-compose.yml: %v\n%s", composeSpec, err, stderr)
	}
	var project struct {
		Services map[string]struct {
			NetworkMode string `json:"network_mode"`
		} `json:"services"`
	}
	if err := json.Unmarshal(out, &project); err != nil {
		t.Fatalf("the validator's output is not JSON: %v\n%s", err, out)
	}
	if len(project.Services) != 4 || project.Services["pqt-dial"].NetworkMode != "service:client" {
		t.Errorf("the Compose v2 model has services %v, want the four of the file with pqt-dial in the client's namespace", project.Services)
	}
}

// TestDockerComposeConfig validates docker-compose.yml with Debian 12's
// docker-compose 1.29 (scripts/test-deps installs it), which rejects what
// only later Compose versions know, such as a top-level name: once with the
// .env that the README's keygen block writes, and once without it, where
// compose must stop with the file's own hint.
func TestDockerComposeConfig(t *testing.T) {
	if _, err := exec.LookPath("docker-compose"); err != nil {
		t.Fatal("docker-compose is not installed: scripts/test-deps installs it (apt-get install docker-compose)")
	}
	envFile := filepath.Join(t.TempDir(), ".env")
	pin := "pqt1_" + strings.Repeat("a", 52)
	if err := os.WriteFile(envFile, []byte("COMPOSE_PROJECT_NAME=pqtunnel-example\nLISTEN_PIN="+pin+"\nDIAL_PIN="+pin+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	empty := filepath.Join(t.TempDir(), ".env")
	if err := os.WriteFile(empty, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	config := func(env string) (string, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		cmd := exec.CommandContext(ctx, "docker-compose", "--env-file", env, "-f", "docker-compose.yml", "config")
		cmd.Dir = "docker-compose"
		for _, kv := range os.Environ() {
			if !strings.HasPrefix(kv, "COMPOSE_") && !strings.HasPrefix(kv, "LISTEN_PIN=") && !strings.HasPrefix(kv, "DIAL_PIN=") {
				cmd.Env = append(cmd.Env, kv)
			}
		}
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	out, err := config(envFile)
	if err != nil {
		t.Fatalf("docker-compose config: %v\n%s", err, out)
	}
	if !strings.Contains(out, "PQT_PEERS: "+pin) {
		t.Errorf("docker-compose config did not put the pins from .env into PQT_PEERS:\n%s", out)
	}
	out, err = config(empty)
	if err == nil || !strings.Contains(out, "run the keygen steps in README.md first") {
		t.Errorf("docker-compose config without the pins: %v, want a failure with the keygen hint:\n%s", err, out)
	}
}

// TestDockerCompose parses docker-compose.yml and checks the wiring: two
// pqtunnel sidecars with identities from secrets, Redis only on an internal
// network, the dial side in the client's network namespace.
func TestDockerCompose(t *testing.T) {
	var c composeFile
	if err := yaml.Unmarshal([]byte(readFile(t, "docker-compose/docker-compose.yml")), &c); err != nil {
		t.Fatalf("docker-compose.yml: %v", err)
	}
	for _, name := range []string{"redis", "pqt-listen", "client", "pqt-dial"} {
		if _, ok := c.Services[name]; !ok {
			t.Fatalf("docker-compose.yml has no service %q", name)
		}
	}
	if !c.Networks["origin"].Internal {
		t.Error(`network "origin" is not internal: Redis would be reachable without the tunnel`)
	}
	if got := c.Services["redis"].Networks; !slices.Equal(got, []string{"origin"}) {
		t.Errorf("redis is on networks %v, want only [origin]", got)
	}
	for name, mode := range map[string]string{"pqt-listen": "listen", "pqt-dial": "dial"} {
		s := c.Services[name]
		if s.Image != "pqtunnel:local" || s.Build == nil {
			t.Errorf("%s: image %q, build %v: want pqtunnel:local built from the repository", name, s.Image, s.Build)
		}
		if s.Healthcheck != nil {
			t.Errorf("%s has a healthcheck, but the distroless image has no shell to run one", name)
		}
		if got := s.Environment["PQT_MODE"]; got != mode {
			t.Errorf("%s: PQT_MODE=%q, want %q", name, got, mode)
		}
		id := s.Environment["PQT_IDENTITY"]
		secret := strings.TrimPrefix(id, "/run/secrets/")
		if secret == id || !slices.Contains(s.Secrets, secret) || c.Secrets[secret].File == "" {
			t.Errorf("%s: PQT_IDENTITY=%q is not one of its secrets %v defined from a file", name, id, s.Secrets)
		}
		if grace, err := time.ParseDuration(s.StopGrace); err != nil || grace <= 30*time.Second {
			t.Errorf("%s: stop_grace_period %q is not above the default PQT_DRAIN_TIMEOUT (30s)", name, s.StopGrace)
		}
		if !strings.HasPrefix(s.Environment["PQT_PEERS"], "${") {
			t.Errorf("%s: PQT_PEERS=%q should come from .env", name, s.Environment["PQT_PEERS"])
		}
	}
	if got := c.Services["pqt-listen"].Environment["PQT_TARGET"]; got != "redis:6379" {
		t.Errorf("pqt-listen: PQT_TARGET=%q, want redis:6379", got)
	}
	dial := c.Services["pqt-dial"]
	if dial.NetworkMode != "service:client" || dial.Environment["PQT_FORWARD"] != "127.0.0.1:6379" {
		t.Errorf("pqt-dial: network_mode %q, PQT_FORWARD %q: want a sidecar in the client's namespace on 127.0.0.1:6379", dial.NetworkMode, dial.Environment["PQT_FORWARD"])
	}
	if tunnel := dial.Environment["PQT_TUNNEL"]; !strings.HasPrefix(tunnel, "pqt-listen:") {
		t.Errorf("pqt-dial: PQT_TUNNEL=%q does not point at pqt-listen", tunnel)
	}
	if _, err := os.Stat(filepath.Join("docker-compose", "../..", "Dockerfile")); err != nil {
		t.Errorf("the build context ../.. has no Dockerfile: %v", err)
	}
}

// k8sObject is the part of a Kubernetes manifest that the test checks.
type k8sObject struct {
	APIVersion string `yaml:"apiVersion"`
	Kind       string `yaml:"kind"`
	Metadata   struct {
		Name string `yaml:"name"`
	} `yaml:"metadata"`
	Data       map[string]interface{} `yaml:"data"`
	StringData map[string]interface{} `yaml:"stringData"`
	Spec       struct {
		Template struct {
			Metadata struct {
				Annotations map[string]interface{} `yaml:"annotations"`
			} `yaml:"metadata"`
			Spec podSpec `yaml:"spec"`
		} `yaml:"template"`
		Ports []struct {
			Port     int    `yaml:"port"`
			Protocol string `yaml:"protocol"`
		} `yaml:"ports"`
	} `yaml:"spec"`
}

type podSpec struct {
	TerminationGracePeriodSeconds int `yaml:"terminationGracePeriodSeconds"`
	SecurityContext               struct {
		RunAsNonRoot *bool `yaml:"runAsNonRoot"`
		RunAsUser    *int  `yaml:"runAsUser"`
		FSGroup      *int  `yaml:"fsGroup"`
	} `yaml:"securityContext"`
	InitContainers []k8sContainer `yaml:"initContainers"`
	Containers     []k8sContainer `yaml:"containers"`
	Volumes        []struct {
		Name   string `yaml:"name"`
		Secret *struct {
			SecretName  string `yaml:"secretName"`
			DefaultMode *int   `yaml:"defaultMode"`
		} `yaml:"secret"`
	} `yaml:"volumes"`
}

type k8sContainer struct {
	Name    string `yaml:"name"`
	EnvFrom []struct {
		ConfigMapRef struct {
			Name string `yaml:"name"`
		} `yaml:"configMapRef"`
	} `yaml:"envFrom"`
	Ports []struct {
		Name          string `yaml:"name"`
		ContainerPort int    `yaml:"containerPort"`
	} `yaml:"ports"`
	ReadinessProbe *struct {
		HTTPGet struct {
			Path string      `yaml:"path"`
			Port interface{} `yaml:"port"`
		} `yaml:"httpGet"`
	} `yaml:"readinessProbe"`
	SecurityContext *struct {
		RunAsNonRoot             *bool `yaml:"runAsNonRoot"`
		ReadOnlyRootFilesystem   *bool `yaml:"readOnlyRootFilesystem"`
		AllowPrivilegeEscalation *bool `yaml:"allowPrivilegeEscalation"`
		Capabilities             struct {
			Drop []string `yaml:"drop"`
		} `yaml:"capabilities"`
	} `yaml:"securityContext"`
	VolumeMounts []struct {
		Name      string `yaml:"name"`
		MountPath string `yaml:"mountPath"`
	} `yaml:"volumeMounts"`
}

// readManifests parses every YAML document of a file.
func readManifests(t *testing.T, path string) []k8sObject {
	t.Helper()
	objs := decodeYAMLDocuments[k8sObject](t, path)
	for _, o := range objs {
		if o.Kind == "" || o.APIVersion == "" || o.Metadata.Name == "" {
			t.Errorf("%s: a document without apiVersion, kind or metadata.name", path)
		}
	}
	return objs
}

// decodeYAMLDocuments decodes every YAML document of a file into a T.
func decodeYAMLDocuments[T any](t *testing.T, path string) []T {
	t.Helper()
	dec := yaml.NewDecoder(strings.NewReader(readFile(t, path)))
	var out []T
	for {
		var o T
		err := dec.Decode(&o)
		if errors.Is(err, io.EOF) {
			return out
		}
		if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		out = append(out, o)
	}
}

// imageUID is the uid and gid of the Dockerfile's distroless nonroot user.
const imageUID = 65532

// TestKubernetes parses the Kubernetes manifests and checks the sidecar
// setup: hardening of every container, the identity read straight from a
// Secret volume at defaultMode 0400 with fsGroup, the
// /readyz probe on a metrics port that binds beyond loopback, Prometheus
// annotations, and a grace period longer than the drain.
func TestKubernetes(t *testing.T) {
	deployments := 0
	for _, file := range []string{"kubernetes/redis-pqtunnel.yaml", "kubernetes/client-pqtunnel.yaml", "kubernetes/secret.yaml"} {
		objs := readManifests(t, file)
		configMaps := map[string]map[string]interface{}{}
		for _, o := range objs {
			if o.Kind == "ConfigMap" {
				configMaps[o.Metadata.Name] = o.Data
				for k, v := range o.Data {
					if _, ok := v.(string); !ok {
						t.Errorf("%s: ConfigMap %s: %s is %T, but ConfigMap values must be strings (quote it)", file, o.Metadata.Name, k, v)
					}
				}
			}
			if o.Kind == "Secret" {
				if _, ok := o.StringData["identity"]; !ok {
					t.Errorf("%s: Secret %s has no stringData.identity", file, o.Metadata.Name)
				}
			}
			if o.Kind == "Service" {
				var udp, tcp bool
				for _, p := range o.Spec.Ports {
					udp = udp || (p.Port == 8443 && p.Protocol == "UDP")
					tcp = tcp || (p.Port == 8443 && p.Protocol == "TCP")
				}
				if !udp || !tcp {
					t.Errorf("%s: Service %s does not carry 8443 on both UDP and TCP", file, o.Metadata.Name)
				}
			}
		}
		for _, o := range objs {
			if o.Kind != "Deployment" {
				continue
			}
			deployments++
			checkDeployment(t, file, o, configMaps)
		}
	}
	if deployments != 2 {
		t.Errorf("found %d Deployments, want 2 (listen side with Redis, dial side with a client)", deployments)
	}
}

func checkDeployment(t *testing.T, file string, o k8sObject, configMaps map[string]map[string]interface{}) {
	t.Helper()
	where := file + ": Deployment " + o.Metadata.Name
	pod := o.Spec.Template.Spec
	for k, want := range map[string]string{"prometheus.io/scrape": "true", "prometheus.io/port": "9090", "prometheus.io/path": "/metrics"} {
		if got, ok := o.Spec.Template.Metadata.Annotations[k].(string); !ok || got != want {
			t.Errorf("%s: annotation %s is %v, want the string %q", where, k, o.Spec.Template.Metadata.Annotations[k], want)
		}
	}
	if pod.SecurityContext.RunAsNonRoot == nil || !*pod.SecurityContext.RunAsNonRoot {
		t.Errorf("%s: pod securityContext.runAsNonRoot is not true", where)
	}
	if sc := pod.SecurityContext; sc.RunAsUser == nil || *sc.RunAsUser != imageUID || sc.FSGroup == nil || *sc.FSGroup != imageUID {
		t.Errorf("%s: pod securityContext does not set runAsUser and fsGroup to the image's uid %d", where, imageUID)
	}
	var sidecar *k8sContainer
	for _, c := range append(slices.Clone(pod.InitContainers), pod.Containers...) {
		sc := c.SecurityContext
		if sc == nil || sc.RunAsNonRoot == nil || !*sc.RunAsNonRoot || sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem ||
			sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation || !slices.Contains(sc.Capabilities.Drop, "ALL") {
			t.Errorf("%s: container %s lacks runAsNonRoot, readOnlyRootFilesystem, allowPrivilegeEscalation: false or capabilities drop ALL", where, c.Name)
		}
		if c.Name == "pqtunnel" {
			sidecar = &c
		}
	}
	if sidecar == nil {
		t.Errorf("%s: no container named pqtunnel", where)
		return
	}
	if len(sidecar.EnvFrom) != 1 || configMaps[sidecar.EnvFrom[0].ConfigMapRef.Name] == nil {
		t.Errorf("%s: the pqtunnel container does not take its environment from a ConfigMap in the same file", where)
		return
	}
	env := configMaps[sidecar.EnvFrom[0].ConfigMapRef.Name]
	str := func(k string) string { s, _ := env[k].(string); return s }
	metricsPort := 0
	for _, p := range sidecar.Ports {
		if p.Name == "metrics" {
			metricsPort = p.ContainerPort
		}
	}
	if want := "0.0.0.0:" + strconv.Itoa(metricsPort); metricsPort == 0 || str("PQT_METRICS") != want {
		t.Errorf("%s: PQT_METRICS=%q with metrics containerPort %d: want %q (a bare port binds 127.0.0.1, which the kubelet cannot reach)", where, str("PQT_METRICS"), metricsPort, want)
	}
	if p := sidecar.ReadinessProbe; p == nil || p.HTTPGet.Path != "/readyz" || (p.HTTPGet.Port != "metrics" && p.HTTPGet.Port != metricsPort) {
		t.Errorf("%s: the pqtunnel container's readinessProbe is not GET /readyz on the metrics port", where)
	}
	// The sidecar reads the Secret in place: the kubelet presents it owned by
	// root with mode 0440 (TestSecretVolumeIdentity runs pqtunnel on that).
	volume := ""
	for _, m := range sidecar.VolumeMounts {
		if strings.HasPrefix(str("PQT_IDENTITY"), m.MountPath+"/") {
			volume = m.Name
		}
	}
	inPlace := false
	for _, v := range pod.Volumes {
		if v.Name == volume && v.Secret != nil && v.Secret.DefaultMode != nil && *v.Secret.DefaultMode == 0o400 {
			inPlace = true
		}
	}
	if !inPlace {
		t.Errorf("%s: PQT_IDENTITY=%q is not in a Secret volume with defaultMode 0400 mounted into the pqtunnel container", where, str("PQT_IDENTITY"))
	}
	drain, err := time.ParseDuration(str("PQT_DRAIN_TIMEOUT"))
	if err != nil {
		t.Errorf("%s: PQT_DRAIN_TIMEOUT=%q: %v", where, str("PQT_DRAIN_TIMEOUT"), err)
	} else if grace := time.Duration(pod.TerminationGracePeriodSeconds) * time.Second; grace <= drain {
		t.Errorf("%s: terminationGracePeriodSeconds %s is not longer than PQT_DRAIN_TIMEOUT %s", where, grace, drain)
	}
}

// unitSettings returns the Key=Value lines of the systemd template unit.
func unitSettings(t *testing.T) map[string][]string {
	t.Helper()
	settings := map[string][]string{}
	sc := bufio.NewScanner(strings.NewReader(readFile(t, "systemd/pqtunnel@.service")))
	for sc.Scan() {
		l := strings.TrimSpace(sc.Text())
		if l == "" || strings.HasPrefix(l, "#") || strings.HasPrefix(l, ";") || strings.HasPrefix(l, "[") {
			continue
		}
		k, v, ok := strings.Cut(l, "=")
		if !ok {
			t.Errorf("pqtunnel@.service: %q is not Key=Value", l)
			continue
		}
		settings[k] = append(settings[k], v)
	}
	return settings
}

func unitDuration(t *testing.T, key string) time.Duration {
	t.Helper()
	v := unitSettings(t)[key]
	if len(v) != 1 {
		t.Fatalf("pqtunnel@.service: %s is set %d times", key, len(v))
	}
	d, err := time.ParseDuration(v[0])
	if err != nil {
		t.Fatalf("pqtunnel@.service: %s=%s: %v", key, v[0], err)
	}
	return d
}

// TestSystemdUnit checks the template unit's hardening and credential
// settings, and runs 'systemd-analyze verify' on it where systemd is installed.
func TestSystemdUnit(t *testing.T) {
	s := unitSettings(t)
	for k, want := range map[string]string{
		"DynamicUser":             "yes",
		"NoNewPrivileges":         "yes",
		"ProtectSystem":           "strict",
		"ProtectHome":             "yes",
		"PrivateTmp":              "yes",
		"PrivateDevices":          "yes",
		"CapabilityBoundingSet":   "",
		"AmbientCapabilities":     "",
		"RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX",
		"SystemCallFilter":        "@system-service",
		"LoadCredential":          "identity:/etc/pqtunnel/%i.id",
		"Environment":             "PQT_IDENTITY=%d/identity",
		"EnvironmentFile":         "/etc/pqtunnel/%i.env",
		"Restart":                 "on-failure",
		"KillSignal":              "SIGTERM",
		"ExecReload":              "/bin/kill -HUP $MAINPID",
		"ExecStart":               "/usr/local/bin/pqtunnel run",
	} {
		if got := s[k]; !slices.Equal(got, []string{want}) {
			t.Errorf("pqtunnel@.service: %s=%q, want exactly %s=%s", k, got, k, want)
		}
	}
	if drain := 30 * time.Second; unitDuration(t, "TimeoutStopSec") <= drain {
		t.Errorf("pqtunnel@.service: TimeoutStopSec is not above the default PQT_DRAIN_TIMEOUT %s", drain)
	}

	analyze, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Log("systemd-analyze is not installed: the unit was checked by its settings only")
		return
	}
	// verify needs ExecStart to exist: check a copy that runs the test's binary.
	dir := t.TempDir()
	unit := strings.ReplaceAll(readFile(t, "systemd/pqtunnel@.service"), "/usr/local/bin/pqtunnel", pqtunnelBin)
	if err := os.WriteFile(filepath.Join(dir, "pqtunnel@.service"), []byte(unit), 0o644); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, analyze, "verify", "--man=no", "pqtunnel@listen.service", "pqtunnel@dial.service")
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("systemd-analyze verify: %v\n%s", err, out)
	}
	for _, l := range strings.Split(string(out), "\n") {
		if strings.Contains(l, "pqtunnel") {
			t.Errorf("systemd-analyze verify: %s", l)
		}
	}
}

// exampleFiles lists every regular file under examples/.
func exampleFiles(t *testing.T) []string {
	t.Helper()
	var files []string
	err := filepath.WalkDir(".", func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.Type().IsRegular() {
			files = append(files, path)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return files
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
