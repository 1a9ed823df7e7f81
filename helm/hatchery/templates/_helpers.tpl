{{/* Names: every object is <release>-<component>, truncated to DNS limits. */}}
{{- define "hatchery.fullname" -}}
{{- if contains "hatchery" .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-hatchery" .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "hatchery.labels" -}}
app.kubernetes.io/name: hatchery
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* selector labels of one component: include with (list $ "optimizer") */}}
{{- define "hatchery.selector" -}}
app.kubernetes.io/name: hatchery
app.kubernetes.io/instance: {{ (index . 0).Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{- define "hatchery.image" -}}
{{- $root := index . 0 -}}
{{- $image := merge (dict) (index . 1) $root.Values.image -}}
image: {{ printf "%s:%s" $image.repository $image.tag | quote }}
imagePullPolicy: {{ $image.pullPolicy }}
{{- end -}}

{{- define "hatchery.podSecurityContext" -}}
securityContext:
  runAsNonRoot: true
  runAsUser: 10001
  runAsGroup: 10001
  fsGroup: 10001
  seccompProfile:
    type: RuntimeDefault
{{- end -}}

{{- define "hatchery.containerSecurityContext" -}}
securityContext:
  allowPrivilegeEscalation: false
  readOnlyRootFilesystem: true
  runAsNonRoot: true
  capabilities:
    drop: [ALL]
{{- end -}}

{{/* Tokens and TLS, the same for every container: the services read them from the environment. */}}
{{- define "hatchery.env" -}}
{{- if .Values.auth.existingSecret }}
{{- range $service := list "optimizer" "inference" "reward" }}
- name: HATCHERY_{{ upper $service }}_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ $.Values.auth.existingSecret }}
      key: {{ $service }}-token
{{- end }}
{{- end }}
{{- if .Values.tls.enabled }}
- name: HATCHERY_TLS_CERT
  value: /etc/hatchery/tls/tls.crt
- name: HATCHERY_TLS_KEY
  value: /etc/hatchery/tls/tls.key
- name: HATCHERY_TLS_CA
  value: /etc/hatchery/tls/ca.crt
{{- if .Values.tls.requireClientCert }}
- name: HATCHERY_TLS_REQUIRE_CLIENT_CERT
  value: "true"
{{- end }}
{{- end }}
{{- end -}}

{{- define "hatchery.tlsMount" -}}
{{- if .Values.tls.enabled }}
- name: tls
  mountPath: /etc/hatchery/tls
  readOnly: true
{{- end }}
{{- end -}}

{{- define "hatchery.tlsVolume" -}}
{{- if .Values.tls.enabled }}
- name: tls
  secret:
    secretName: {{ required "tls.secretName is required when tls.enabled" .Values.tls.secretName }}
{{- end }}
{{- end -}}

{{/* Native gRPC probes; Kubernetes' gRPC probe speaks no TLS, so with TLS on the probes check the port. */}}
{{- define "hatchery.probes" -}}
{{- $root := index . 0 -}}
{{- $port := index . 1 -}}
{{- $service := index . 2 -}}
{{- $check := ternary (dict "tcpSocket" (dict "port" $port)) (dict "grpc" (dict "port" $port "service" $service)) $root.Values.tls.enabled -}}
startupProbe:
  {{- toYaml $check | nindent 2 }}
  periodSeconds: {{ $root.Values.startupProbe.periodSeconds }}
  failureThreshold: {{ $root.Values.startupProbe.failureThreshold }}
readinessProbe:
  {{- toYaml $check | nindent 2 }}
  periodSeconds: 10
livenessProbe:
  {{- toYaml $check | nindent 2 }}
  periodSeconds: 20
  failureThreshold: 6
{{- end -}}

{{- define "hatchery.optimizerAddress" -}}
{{ include "hatchery.fullname" . }}-optimizer:{{ .Values.optimizer.port }}
{{- end -}}

{{/* A headless Service: workers resolve every reward pod and spread calls round robin. */}}
{{- define "hatchery.rewardAddress" -}}
dns:///{{ include "hatchery.fullname" . }}-reward:{{ .Values.reward.builtin.port }}
{{- end -}}

{{/* "true" when run.model.source is a hub id (org/name): downloaded by the optimizer's init container. */}}
{{- define "hatchery.hubModel" -}}
{{- $source := (.Values.run.model | default dict).source | default "" -}}
{{- if regexMatch "^[\\w.-]+/[\\w.-]+$" $source }}true{{ end -}}
{{- end -}}

{{/* The model claim, read-only, on the optimizer and the workers. */}}
{{- define "hatchery.modelMount" -}}
{{- with .Values.model }}
{{- if .existingClaim }}
- name: model
  mountPath: {{ .mountPath }}
  readOnly: true
  {{- with .subPath }}
  subPath: {{ . }}
  {{- end }}
{{- end }}
{{- end }}
{{- end -}}

{{- define "hatchery.modelVolume" -}}
{{- with .Values.model.existingClaim }}
- name: model
  persistentVolumeClaim: {claimName: {{ . }}, readOnly: true}
{{- end }}
{{- end -}}

{{/* What the optimizer and its model download share: the run volume, the config, prompt files, caches. */}}
{{- define "hatchery.optimizerEnv" -}}
- name: HATCHERY_CACHE
  value: /opt/hatchery/cache
- name: HF_DATASETS_CACHE  # on the run volume: the root file system is read-only
  value: /var/lib/hatchery/runs/.cache/datasets
- name: HF_HUB_CACHE  # a hub model, downloaded once and kept across restarts
  value: /var/lib/hatchery/runs/.cache/huggingface/hub
{{- end -}}
{{- define "hatchery.optimizerMounts" -}}
- {name: runs, mountPath: /var/lib/hatchery/runs}
- {name: run-config, mountPath: /etc/hatchery/run, readOnly: true}
- {name: tmp, mountPath: /tmp}
{{- with .Values.data }}
{{- if or .existingClaim .configMap }}
- name: data
  mountPath: {{ .mountPath }}
  readOnly: true
  {{- if and .existingClaim .subPath }}
  subPath: {{ .subPath }}
  {{- end }}
{{- end }}
{{- end }}
{{- include "hatchery.modelMount" . }}
{{- end -}}
