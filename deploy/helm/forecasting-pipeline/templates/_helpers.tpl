{{/* The prefix of every object: the release's name, with "forecasting" unless it says so already. */}}
{{- define "fp.fullname" -}}
{{- if contains "forecasting" .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-forecasting" .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "fp.labels" -}}
app.kubernetes.io/part-of: forecasting-pipeline
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "fp.image" -}}
{{ printf "%s:%s" .Values.image.repository .Values.image.tag }}
{{- end -}}

{{/* The environment of every container: the database from its Secret, the pinned checkpoint read
     offline from the shared cache, and writable caches under /tmp. */}}
{{- define "fp.env" -}}
- name: DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ .Values.database.secretName }}
      key: {{ .Values.database.urlKey }}
- name: CHRONOS2_MODEL
  value: {{ .Values.model.id | quote }}
- name: CHRONOS2_REVISION
  value: {{ include "fp.revision" . | quote }}
- name: HF_HOME
  value: {{ .Values.model.hfHome | quote }}
- name: HF_HUB_OFFLINE
  value: "1"
- name: FRAMES_DIR
  value: {{ printf "%s/frames" .Values.sharedVolume.mountPath | quote }}
# Fine-tuned checkpoints: written by Dagster's training pod, read where the champion serves.
- name: MODEL_REGISTRY_DIR
  value: {{ printf "%s/models" .Values.sharedVolume.mountPath | quote }}
- name: XDG_CACHE_HOME
  value: /tmp/cache
- name: MPLCONFIGDIR
  value: /tmp/matplotlib
- name: TQDM_DISABLE
  value: "1"
{{- with .Values.env }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "fp.volumes" -}}
- name: shared
  persistentVolumeClaim:
    claimName: {{ .Values.sharedVolume.claimName }}
- name: tmp
  emptyDir: {}
{{- end -}}

{{/* Mounts: /tmp always, the shared volume read-write or read-only (the second argument). */}}
{{- define "fp.volumeMounts" -}}
{{- $ := index . 0 -}}
- name: shared
  mountPath: {{ $.Values.sharedVolume.mountPath }}
  readOnly: {{ index . 1 }}
- name: tmp
  mountPath: /tmp
{{- end -}}

{{- define "fp.podSecurity" -}}
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
{{- end -}}

{{- define "fp.containerSecurity" -}}
securityContext:
  {{- toYaml .Values.containerSecurityContext | nindent 2 }}
{{- end -}}

{{- define "fp.revision" -}}
{{- required "model.revision must pin the checkpoint: --set model.revision=COMMIT" .Values.model.revision -}}
{{- end -}}
