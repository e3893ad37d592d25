# The same image as make image (an OCI layout, no engine needed), for
# those with a container engine: docker build -t ghcr.io/lastgasp/lastgasp:dev .
# The BPF object is committed: no clang in the build stage.
FROM golang:1.26 AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN CGO_ENABLED=0 go build -trimpath -o /lastgasp ./cmd/lastgasp

FROM scratch
COPY --from=build /lastgasp /usr/local/bin/lastgasp
ENTRYPOINT ["/usr/local/bin/lastgasp"]
