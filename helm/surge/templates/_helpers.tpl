{{/* Names, labels and the checks every template shares; every helper is prefixed `surge.`. */}}

{{- define "surge.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Resource name prefix; KubeRay appends suffixes to the RayService's name, so keep it short. */}}
{{- define "surge.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "surge.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "surge.selectorLabels" -}}
app.kubernetes.io/name: {{ include "surge.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "surge.labels" -}}
helm.sh/chart: {{ include "surge.chart" . }}
{{ include "surge.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: surge
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "surge.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "surge.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name must name an existing ServiceAccount when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "surge.image" -}}
{{- if eq (toString .Values.image.tag) "latest" }}
{{- fail "image.tag: pin a version; `latest` is not allowed" }}
{{- end }}
{{- printf "%s:%s" .Values.image.repository .Values.image.tag }}
{{- end }}

{{- define "surge.servePort" -}}
{{- dig "server" "port" 8000 .Values.surge }}
{{- end }}

{{/* Ray's metrics export port on every node: the surge config's observability.metrics.export_port (as for
     the nodes `make run` starts), KubeRay's 8080 when the config leaves it unset. */}}
{{- define "surge.metricsPort" -}}
{{- dig "observability" "metrics" "export_port" nil .Values.surge | default 8080 }}
{{- end }}

{{/* How long the old cluster outlives a traffic switch: by default as long as a request may run. */}}
{{- define "surge.deletionDelay" -}}
{{- if kindIs "invalid" .Values.rayClusterDeletionDelaySeconds }}
{{- dig "server" "request_timeout_s" 300 .Values.surge | float64 | ceil | int }}
{{- else }}
{{- .Values.rayClusterDeletionDelaySeconds }}
{{- end }}
{{- end }}

{{- define "surge.serveServiceName" -}}
{{- printf "%s-serve" (include "surge.fullname" .) }}
{{- end }}

{{/* Serve's HAProxy throughput mode, as cluster/env.py ray_env sets it for a local run. */}}
{{- define "surge.haproxyEnv" -}}
{{- if eq (dig "server" "proxy" "haproxy" .Values.surge) "haproxy" }}
- name: RAY_SERVE_THROUGHPUT_OPTIMIZED
  value: "1"
- name: RAY_SERVE_ENABLE_HA_PROXY
  value: "1"
- name: RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S
  value: {{ dig "server" "ingress_drain_s" 30 .Values.surge | toString | quote }}
- name: RAY_SERVE_HAPROXY_BINARY_PATH
  value: {{ .Values.haproxy.wrapperPath | quote }}
- name: SURGE_HAPROXY_BINARY
  value: {{ .Values.haproxy.binaryPath | quote }}
- name: SURGE_HAPROXY_ADMIN_HOST
  value: {{ ternary "0.0.0.0" (dig "server" "haproxy_admin_host" "127.0.0.1" .Values.surge) .Values.haproxy.exposeAdmin | quote }}
- name: RAY_SERVE_HAPROXY_STATS_PORT
  value: {{ .Values.haproxy.statsPort | toString | quote }}
- name: RAY_SERVE_HAPROXY_METRICS_PORT
  value: {{ .Values.haproxy.metricsPort | toString | quote }}
{{- end }}
{{- end }}

{{/* The engines' platform, for the app build: Serve runs it in a task on the head, which has no GPU to detect. */}}
{{- define "surge.platform" -}}
{{- $gpus := 0 }}
{{- range .Values.workerGroups }}
{{- if .enabled }}
{{- $gpus = add $gpus (int .gpusPerNode) }}
{{- end }}
{{- end }}
{{- ternary "cuda" "cpu" (gt $gpus 0) }}
{{- end }}

{{/* "true" when HAProxy runs (throughput mode) and its stats and metrics listeners are to be reachable beyond the pod. */}}
{{- define "surge.exposeAdmin" -}}
{{- if and .Values.haproxy.exposeAdmin (eq (dig "server" "proxy" "haproxy" .Values.surge) "haproxy") }}true{{ end }}
{{- end }}

{{/* The chart's own environment of every Ray container: Serve's front door, the key store's DSN. */}}
{{- define "surge.chartEnv" -}}
- name: RAY_USAGE_STATS_ENABLED
  value: "0"
- name: SURGE_PLATFORM
  value: {{ include "surge.platform" . }}
{{- include "surge.haproxyEnv" . }}
{{- if .Values.postgres.enabled }}
- name: SURGE_ADMISSION__KEY_STORE_DSN
  valueFrom:
    secretKeyRef:
      name: {{ required "postgres.existingSecret must name the Secret holding the PostgreSQL DSN" .Values.postgres.existingSecret }}
      key: {{ .Values.postgres.secretKey }}
{{- end }}
{{- end }}

{{/* A Ray container's environment (`.root`, `.head`): the chart's own, then `extraEnv`, whose entries replace
     the chart's of the same name. `env` is a list-map in the CRD: the API server rejects a name listed twice. */}}
{{- define "surge.env" -}}
{{- $own := include "surge.chartEnv" .root | fromYamlArray }}
{{- if .head }}
{{- $own = append $own (dict "name" "SURGE_CONFIG" "value" "/etc/surge/surge.yaml") }}
{{- end }}
{{- $extra := .root.Values.extraEnv | default list }}
{{- $replaced := dict }}
{{- range $extra }}
{{- if hasKey $replaced .name }}
{{- fail (printf "extraEnv: %s is listed twice" .name) }}
{{- end }}
{{- $_ := set $replaced .name true }}
{{- end }}
{{- $env := list }}
{{- range $own }}
{{- if not (hasKey $replaced .name) }}
{{- $env = append $env . }}
{{- end }}
{{- end }}
{{- toYaml (concat $env $extra) }}
{{- end }}

{{- define "surge.volumes" -}}
- name: dshm
  emptyDir:
    medium: Memory
    sizeLimit: {{ .Values.shmSize }}
- name: ray-logs
  emptyDir: {}
{{- if include "surge.batchFilesOn" . }}
- name: batch-files
  persistentVolumeClaim:
    claimName: {{ include "surge.batchFilesClaim" . }}
{{- end }}
{{- with .Values.extraVolumes }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "surge.volumeMounts" -}}
- name: dshm
  mountPath: /dev/shm
- name: ray-logs
  mountPath: /tmp/ray
{{- if include "surge.batchFilesOn" . }}
- name: batch-files
  mountPath: {{ include "surge.batchFilesDir" . }}
{{- end }}
{{- with .Values.extraVolumeMounts }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* "true" when the Batch API's files get the chart's volume: batchFiles on and the Batch API on. */}}
{{- define "surge.batchFilesOn" -}}
{{- if and .Values.batchFiles.enabled (dig "batch" "enabled" true .Values.surge) }}true{{ end }}
{{- end }}

{{- define "surge.batchFilesDir" -}}
{{- dig "batch" "files_dir" ".cache/surge-files" .Values.surge | clean }}
{{- end }}

{{- define "surge.batchFilesClaim" -}}
{{- .Values.batchFiles.existingClaim | default (printf "%s-batch-files" (include "surge.fullname" .)) }}
{{- end }}

{{/* The files volume's mount path: absolute (the app would resolve a relative one inside the image, off the
     volume), and clear of every other mount and of the image's own directories (neither equal, nor one inside
     the other: a mount over /opt/surge would hide the app; one inside a read-only volume cannot be made). */}}
{{- define "surge.validateBatchFiles" -}}
{{- if include "surge.batchFilesOn" . }}
{{- $dir := include "surge.batchFilesDir" . }}
{{- if not (isAbs $dir) }}
{{- fail (printf "surge.batch.files_dir is %q: with batchFiles.enabled it is the volume's mount path and must be absolute (e.g. /var/lib/surge/batch-files)" $dir) }}
{{- end }}
{{- $others := list (list "/dev/shm" "the chart's shm") (list "/tmp/ray" "the chart's Ray logs") (list "/etc/surge" "the chart's surge config") }}
{{- range .Values.extraVolumeMounts }}
{{- $others = append $others (list (clean .mountPath) (printf "extraVolumeMounts %q" .name)) }}
{{- end }}
{{- range $others }}
{{- $path := index . 0 }}
{{- if or (eq $path $dir) (hasPrefix (printf "%s/" (trimSuffix "/" $path)) $dir) (hasPrefix (printf "%s/" (trimSuffix "/" $dir)) $path) }}
{{- fail (printf "surge.batch.files_dir %s collides with the mount %s (%s): the Batch API's files volume needs a path of its own, neither another mount's nor one inside or above it" $dir $path (index . 1)) }}
{{- end }}
{{- end }}
{{- range list "/opt/surge" "/home/ray" "/usr" "/etc" "/var" "/bin" "/lib" "/dev" "/proc" "/sys" }}
{{- if or (eq . $dir) (hasPrefix (printf "%s/" (trimSuffix "/" $dir)) .) }}
{{- fail (printf "surge.batch.files_dir %s would hide the image's %s under the Batch API's files volume: pick a directory of its own (e.g. /var/lib/surge/batch-files)" $dir .) }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}

{{/* Container ports of every Ray node: Ray's metrics (named for scraping); HAProxy's only when asked. */}}
{{- define "surge.nodePorts" -}}
- name: metrics
  containerPort: {{ include "surge.metricsPort" . }}
  protocol: TCP
{{- if include "surge.exposeAdmin" . }}
- name: haproxy-stats
  containerPort: {{ .Values.haproxy.statsPort }}
  protocol: TCP
- name: haproxy-metrics
  containerPort: {{ .Values.haproxy.metricsPort }}
  protocol: TCP
{{- end }}
{{- end }}

{{/* The pod spec parts every Ray pod shares; `.` is the root context. */}}
{{- define "surge.podCommon" -}}
serviceAccountName: {{ include "surge.serviceAccountName" . }}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
volumes:
  {{- include "surge.volumes" . | nindent 2 }}
{{- end }}

{{/* Checks values.schema.json cannot express: a pool's TP must fit a node of every GPU group hosting it. */}}
{{- define "surge.validate" -}}
{{- $pools := dict }}
{{- range .Values.surge.pools }}
{{- $_ := set $pools .name . }}
{{- end }}
{{- $gpuGroups := 0 }}
{{- range $group, $spec := .Values.workerGroups }}
{{- if $spec.enabled }}
{{- if gt (int $spec.minReplicas) (int $spec.maxReplicas) }}
{{- fail (printf "workerGroups.%s: minReplicas (%v) is above maxReplicas (%v)" $group $spec.minReplicas $spec.maxReplicas) }}
{{- end }}
{{- $gpus := int $spec.gpusPerNode }}
{{- if gt $gpus 0 }}
{{- $gpuGroups = add1 $gpuGroups }}
{{- $hosted := $spec.pools | default (keys $pools | sortAlpha) }}
{{- range $hosted }}
{{- $pool := index $pools . }}
{{- if not $pool }}
{{- fail (printf "workerGroups.%s.pools: %q is not a pool in surge.pools" $group .) }}
{{- end }}
{{- $tp := int (default 1 $pool.tensor_parallel_size) }}
{{- if ne (mod $gpus $tp) 0 }}
{{- fail (printf "workerGroups.%s: pool %q has tensor_parallel_size %d, which does not divide the group's gpusPerNode %d (tensor-parallel ranks stay on one node)" $group $pool.name $tp $gpus) }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
{{- if gt $gpuGroups 0 }}
{{- range .Values.surge.pools }}
{{- if not (include "surge.poolGroups" (dict "root" $ "pool" .) | fromJsonArray) }}
{{- fail (printf "surge.pools: %q is in no enabled GPU worker group's pools, so it has nowhere to run" .name) }}
{{- end }}
{{- end }}
{{- end }}
{{- include "surge.validatePods" . }}
{{- include "surge.validateBatchFiles" . }}
{{- $host := dig "server" "host" "127.0.0.1" .Values.surge }}
{{- if not (has $host (list "0.0.0.0" "::")) }}
{{- fail (printf "surge.server.host is %s: in a pod Serve must listen on every interface (0.0.0.0), where the Serve Service and the operator's health probe reach it" $host) }}
{{- end }}
{{- $ingress := dig "ingress" "num_replicas" 1 .Values.surge | int }}
{{- $admission := dig "admission" "enabled" true .Values.surge }}
{{- $shared := or .Values.postgres.enabled (hasPrefix "postgres" (dig "admission" "key_store_dsn" "" .Values.surge)) }}
{{- if and $admission (gt $ingress 1) (not $shared) }}
{{- fail (printf "surge.ingress.num_replicas is %d: more than one ingress replica needs postgres.enabled (each would keep its own SQLite limits)" $ingress) }}
{{- end }}
{{- end }}

{{/* Every listener of a Ray pod needs its own port (HAProxy's admin listeners too: loopback still collides with
     a wildcard bind); the Ray start parameters, extra volumes and mounts must not take the chart's own. */}}
{{- define "surge.validatePods" -}}
{{- $listeners := list (list "Ray's GCS" 6379) (list "Ray's dashboard" 8265) (list "Ray's client server" 10001) }}
{{- $listeners = append $listeners (list "surge.server.port" (include "surge.servePort" . | int)) }}
{{- $listeners = append $listeners (list "surge.observability.metrics.export_port" (include "surge.metricsPort" . | int)) }}
{{- if include "surge.haproxyEnv" . }}
{{- $listeners = append $listeners (list "haproxy.statsPort" (int .Values.haproxy.statsPort)) }}
{{- $listeners = append $listeners (list "haproxy.metricsPort" (int .Values.haproxy.metricsPort)) }}
{{- end }}
{{- $taken := dict }}
{{- range $listeners }}
{{- $port := index . 1 | toString }}
{{- if hasKey $taken $port }}
{{- fail (printf "port %s is both %s and %s: every listener of a Ray pod needs its own port" $port (get $taken $port) (index . 0)) }}
{{- end }}
{{- $_ := set $taken $port (index . 0) }}
{{- end }}
{{- $groups := dict "head" .Values.head }}
{{- range $group, $spec := .Values.workerGroups }}
{{- $_ := set $groups (printf "workerGroups.%s" $group) $spec }}
{{- end }}
{{- range $where, $spec := $groups }}
{{- range $key, $why := dict "metrics-export-port" "the chart sets it from surge.observability.metrics.export_port" "dashboard-host" "the chart sets it (0.0.0.0, for the operator)" "labels" "KubeRay refuses it; the chart sets the group's Ray node labels" }}
{{- if hasKey ($spec.rayStartParams | default dict) $key }}
{{- fail (printf "%s.rayStartParams.%s: %s" $where $key $why) }}
{{- end }}
{{- end }}
{{- end }}
{{- range .Values.extraVolumes }}
{{- if has .name (list "dshm" "ray-logs" "surge-config" "batch-files") }}
{{- fail (printf "extraVolumes: %q is a volume of the chart's own; pick another name" .name) }}
{{- end }}
{{- end }}
{{- range .Values.extraVolumeMounts }}
{{- if has .mountPath (list "/dev/shm" "/tmp/ray" "/etc/surge") }}
{{- fail (printf "extraVolumeMounts: %s is a mount path of the chart's own (shm, Ray's logs, the surge config)" .mountPath) }}
{{- end }}
{{- end }}
{{- end }}

{{/* A worker group's resources with `nvidia.com/gpu` set from `gpusPerNode` in requests and limits. */}}
{{- define "surge.workerResources" -}}
{{- $res := deepCopy (.resources | default dict) }}
{{- if gt (int .gpusPerNode) 0 }}
{{- $limits := $res.limits | default dict }}
{{- $_ := set $limits "nvidia.com/gpu" (int .gpusPerNode) }}
{{- $_ = set $res "limits" $limits }}
{{- $requests := $res.requests | default dict }}
{{- $_ = set $requests "nvidia.com/gpu" (int .gpusPerNode) }}
{{- $_ = set $res "requests" $requests }}
{{- end }}
{{- toYaml $res }}
{{- end }}

{{/* The Serve config KubeRay submits: the app built by deployments.app:app_builder from `surge:`, plus one
     `deployments` entry per deployment it builds (names as deployments/app.py gives them), where
     `deploymentOverrides` may tune Serve options. */}}
{{- define "surge.serveConfig" -}}
proxy_location: {{ dig "server" "proxy_location" "EveryNode" .Values.surge }}
http_options:
  host: {{ dig "server" "host" "0.0.0.0" .Values.surge | quote }}
  port: {{ include "surge.servePort" . }}
applications:
  - name: {{ dig "ray" "app_name" "surge" .Values.surge }}
    import_path: deployments.app:app_builder
    route_prefix: /
    args:
      config:
        {{- toYaml .Values.surge | nindent 8 }}
    deployments:
      {{- $entries := list (dict "name" "ingress") (dict "name" "traffic-router") }}
      {{- if dig "batch" "enabled" true .Values.surge }}
      {{- $entries = append $entries (dict "name" "batch-runner") }}
      {{- end }}
      {{- range .Values.surge.pools }}
      {{- $entries = append $entries (include "surge.poolPlacement" (dict "root" $ "pool" .) | fromYaml) }}
      {{- end }}
      {{- $names := list }}
      {{- range $entries }}
      {{- $names = append $names .name }}
      {{- end }}
      {{- range $name, $_ := .Values.deploymentOverrides }}
      {{- if not (has $name $names) }}
      {{- fail (printf "deploymentOverrides.%s: the app builds no such deployment (it builds %s)" $name (join ", " $names)) }}
      {{- end }}
      {{- end }}
      {{- range $entries }}
      - {{ merge (deepCopy (get $.Values.deploymentOverrides .name | default dict)) . | toYaml | nindent 8 | trim }}
      {{- end }}
{{- end }}

{{/* The enabled GPU worker groups hosting a pool (`.root`, `.pool`), as a JSON list: those whose `pools` name it
     or are empty; every one without `.pool`. */}}
{{- define "surge.poolGroups" -}}
{{- $hosting := list }}
{{- range $group, $spec := .root.Values.workerGroups }}
{{- if and $spec.enabled (gt (int $spec.gpusPerNode) 0) (or (not $.pool) (not $spec.pools) (has $.pool.name $spec.pools)) }}
{{- $hosting = append $hosting $group }}
{{- end }}
{{- end }}
{{- toJson $hosting }}
{{- end }}

{{/* A pool's `deployments` entry (`.root`, `.pool`): when only some GPU groups host it, its placement group's
     bundles select those groups' Ray node label, so a small pool cannot take GPUs of a node sized for a big
     one. Ray's autoscaler honours label selectors in v2 only: with v1, `pools` is a check, not a placement.
     Serve refuses a selector without its bundles, so they are restated (surge.poolBundles). */}}
{{- define "surge.poolPlacement" -}}
{{- $entry := dict "name" (printf "pool-%s" .pool.name) }}
{{- $hosting := include "surge.poolGroups" . | fromJsonArray }}
{{- $gpuGroups := include "surge.poolGroups" (dict "root" .root) | fromJsonArray }}
{{- $pinnable := or (not .root.Values.autoscaling.enabled) (eq .root.Values.autoscaling.version "v2") }}
{{- if and $pinnable $hosting (lt (len $hosting) (len $gpuGroups)) }}
{{- $value := (len $hosting | eq 1) | ternary (first $hosting) (printf "in(%s)" (join "," $hosting)) }}
{{- $_ := set $entry "placement_group_bundle_label_selector" (list (dict "surge.dev/worker-group" $value)) }}
{{- $_ = merge $entry (include "surge.poolBundles" .pool | fromJson) }}
{{- end }}
{{- toYaml $entry }}
{{- end }}

{{/* A pool's placement group on GPUs exactly as cluster/placement.py plans it for cuda: one GPU bundle per
     engine rank, the replica actor's CPUs in bundle 0, ranks packed on one node unless pipeline-parallel
     (tests/unit/test_helm_chart.py compares the two). */}}
{{- define "surge.poolBundles" -}}
{{- $pp := dig "pipeline_parallel_size" 1 . | int }}
{{- $world := mul (dig "tensor_parallel_size" 1 . | int) $pp }}
{{- $perRank := dig "cpus_per_worker" 1.0 . | float64 }}
{{- $replica := dig "num_cpus" 1.0 . | float64 }}
{{- $bundles := list }}
{{- range $rank := until (int $world) }}
{{- $cpus := ternary (addf $perRank $replica) $perRank (eq $rank 0) }}
{{- $bundle := dict "GPU" 1 }}
{{- if gt $cpus 0.0 }}
{{- $_ := set $bundle "CPU" $cpus }}
{{- end }}
{{- $bundles = append $bundles $bundle }}
{{- end }}
{{- $strategy := ternary "STRICT_PACK" "PACK" (eq $pp 1) }}
{{- toJson (dict "placement_group_bundles" $bundles "placement_group_strategy" $strategy) }}
{{- end }}
