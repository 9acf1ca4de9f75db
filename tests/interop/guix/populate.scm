;;; Populate a Guix store through the real guix-daemon (run with `guix repl`).
;;;
;;; Environment:
;;;   GEN   generation tag ("a" or "b"); "b" adds items on top of "a" (some
;;;         referencing "a" items) for the incremental scenario.
;;;   NDRV  number of simple derivations to build (default 24 for a, 8 for b)
;;;   OUT   file to which "KIND PATH" lines are written (one per store item
;;;         created or built), KIND in text|tree|flat|busybox|drv|out|fo.
;;;
;;; Items produced:
;;;  - a store-resident static busybox (bin/busybox + bin/sh -> busybox + applets)
;;;  - text items with references (chains)
;;;  - recursive directory trees: executables, symlinks, empty dir/file,
;;;    odd sizes, a 200 KiB file, unicode names; identical files shared
;;;    between items (-> /gnu/store/.links hard links)
;;;  - a flat (non-recursive) added file
;;;  - NDRV derivations built with busybox; chains whose outputs name their
;;;    inputs' paths (reference scanning), self-references, multi-output
;;;    derivations (out/lib/doc, lib -> out), single-file outputs, a
;;;    fixed-output derivation; in generation b a non-deterministic one.
;;;   NONDET_ONLY=1: only build the non-deterministic derivation.

(use-modules (guix store) (guix derivations) (gcrypt hash) (guix base16)
             (rnrs bytevectors) (ice-9 format) (srfi srfi-1))

(define gen (or (getenv "GEN") "a"))
(define ndrv (let ((n (getenv "NDRV")))
               (if n (string->number n) (if (string=? gen "a") 24 8))))
(define out-file (or (getenv "OUT") (string-append "/root/populate-" gen ".list")))
(define out-port (open-output-file out-file))
(define (note kind path)
  (format out-port "~a ~a~%" kind path)
  (force-output out-port)
  path)

(define (write-file* file text mode)
  (call-with-output-file file (lambda (p) (display text p)))
  (chmod file mode))

(define (mkdir-p dir)
  (unless (file-exists? dir)
    (mkdir-p (dirname dir))
    (mkdir dir)))

(define tmp (string-append "/tmp/populate-" gen))
(system* "rm" "-rf" tmp)
(mkdir-p tmp)

(define common-text "common shared content: identical in many store items\n")
;; >= 8192 bytes, so the daemon deduplicates it into /gnu/store/.links;
;; same bytes as busybox `seq 1 4000` (18893 bytes)
(define big-common
  (string-append (string-join (map number->string (iota 4000 1)) "\n") "\n"))

(with-store store
  ;; --- busybox (identical in every generation: add-to-store is idempotent)
  (define bbdir (string-append tmp "/busybox"))
  (mkdir-p (string-append bbdir "/bin"))
  (system* "cp" "/bin/busybox" (string-append bbdir "/bin/busybox"))
  (chmod (string-append bbdir "/bin/busybox") #o755)
  (for-each (lambda (applet)
              (symlink "busybox" (string-append bbdir "/bin/" applet)))
            '("sh" "mkdir" "cat" "ln" "chmod" "cp" "touch" "head" "seq"))
  (define bb (note "busybox" (add-to-store store "busybox-static" #t "sha256" bbdir)))
  (define sh (string-append bb "/bin/sh"))

  ;; a non-deterministic derivation (output differs on every build), part of
  ;; generation b; NONDET_ONLY=1 builds just it (to build it independently in
  ;; another store)
  (define (make-nondet)
    (derivation store "nondet-b" sh (list "-c" "echo $$-$RANDOM-$RANDOM > $out")
                #:env-vars `(("PATH" . ,(string-append bb "/bin")))
                #:sources (list bb)))
  (when (getenv "NONDET_ONLY")
    (let ((nondet (make-nondet)))
      (build-derivations store (list nondet))
      (note "drv" (derivation-file-name nondet))
      (note "out" (derivation->output-path nondet))
      (close-port out-port)
      (exit 0)))

  ;; --- text items with references
  (define t0 (note "text" (add-text-to-store store (string-append "leaf-" gen ".txt")
                                             (string-append "leaf of generation " gen "\n"))))
  (define t1 (note "text" (add-text-to-store store (string-append "mid-" gen ".txt")
                                             (string-append "I point to " t0 "\n")
                                             (list t0))))
  (define t2 (note "text" (add-text-to-store store (string-append "top-" gen ".txt")
                                             (string-append "I point to " t0 " and " t1 "\n")
                                             (list t0 t1))))
  ;; a text item whose name is as long as guix-daemon can make one: 217 characters
  ;; (its `<path>.lock` is then 255 bytes; Nix would refuse any name past 211)
  (define tlong (note "text" (add-text-to-store store
                                                (string-append "long-" gen "-" (make-string 210 #\n))
                                                (string-append "long name of generation " gen "\n"))))
  ;; a text item with the common content (dedups with trees and outputs)
  (define tc (note "text" (add-text-to-store store (string-append "common-" gen ".txt")
                                             common-text)))
  ;; generation b: text items referencing generation a items
  (define prev-texts
    (if (string=? gen "b")
        (let ((a-leaf (add-text-to-store store "leaf-a.txt" "leaf of generation a\n")))
          (list (note "text" (add-text-to-store store "b-refs-a.txt"
                                                (string-append "b refers to " a-leaf "\n")
                                                (list a-leaf)))))
        '()))

  ;; --- directory trees
  (define (make-tree dir variant)
    (mkdir-p (string-append dir "/bin"))
    (mkdir-p (string-append dir "/share/doc/empty-dir"))
    (mkdir-p (string-append dir "/lib/deep/er/still"))
    (write-file* (string-append dir "/bin/tool") (string-append "#!/bin/sh\necho tool " variant "\n") #o755)
    (write-file* (string-append dir "/bin/shared-exe") "#!/bin/sh\necho shared\n" #o755)
    (write-file* (string-append dir "/share/doc/README") (string-append "readme " variant "\n") #o644)
    (write-file* (string-append dir "/share/doc/COMMON") common-text #o644)
    (write-file* (string-append dir "/share/doc/BIGCOMMON") big-common #o644)
    (write-file* (string-append dir "/share/doc/empty") "" #o644)
    (write-file* (string-append dir "/share/doc/odd7") "1234567" #o644)
    (write-file* (string-append dir "/share/doc/héllo wörld ✓") "unicode name\n" #o644)
    (write-file* (string-append dir "/lib/deep/er/still/data.bin")
                 (apply string-append
                        (map (lambda (i) (format #f "~8,'0d line of data ~a\n" i variant))
                             (iota 7000)))
                 #o644)
    (symlink "../share/doc/README" (string-append dir "/bin/readme-link"))
    (symlink "/nonexistent/dangling" (string-append dir "/bin/dangling"))
    (symlink "tool" (string-append dir "/bin/tool-alias")))
  (define trees
    (map (lambda (v)
           (let ((dir (string-append tmp "/tree-" v)))
             (make-tree dir v)
             (note "tree" (add-to-store store (string-append "tree-" v) #t "sha256" dir))))
         (list (string-append gen "1") (string-append gen "2"))))
  ;; recursive single executable file, and a flat file
  (define exe-file (string-append tmp "/single-exe"))
  (write-file* exe-file (string-append "#!/bin/sh\necho single " gen "\n") #o755)
  (define single (note "tree" (add-to-store store (string-append "single-exe-" gen) #t "sha256" exe-file)))
  (define flat-file (string-append tmp "/flat.txt"))
  (write-file* flat-file (string-append "flat file " gen "\n") #o644)
  (define flat (note "flat" (add-to-store store (string-append "flat-" gen ".txt") #f "sha256" flat-file)))

  ;; --- derivations
  (define env `(("PATH" . ,(string-append bb "/bin"))))
  (define* (mkdrv name script #:key (sources (list bb)) (inputs '())
                  (outputs '("out")) hash hash-algo)
    (derivation store name sh (list "-c" script)
                #:env-vars env #:sources sources #:inputs inputs
                #:outputs outputs #:hash hash #:hash-algo hash-algo))

  ;; i-th simple derivation: a directory output; every third one refers to the
  ;; previous one's output; every fifth has a self-reference; every fourth
  ;; is a single-file output.
  (define simple-drvs
    (let loop ((i 0) (prev #f) (acc '()))
      (if (= i ndrv)
          (reverse acc)
          (let* ((name (format #f "simple-~a-~2,'0d" gen i))
                 (dep? (and prev (= 0 (modulo i 3))))
                 (dep-out (and dep? (derivation->output-path prev)))
                 (file-out? (= 0 (modulo i 4)))
                 (text-ref? (and (> i 0) (= 0 (modulo i 7))))
                 (script
                  (if file-out?
                      (string-append "echo " name " > $out"
                                     (if dep? (string-append "; echo " dep-out " >> $out") ""))
                      (string-append
                       "mkdir -p $out/bin $out/share; "
                       "echo " name " > $out/share/id; "
                       "printf '" common-text "' > $out/share/COMMON; "
                       "seq 1 4000 > $out/share/BIGCOMMON; "
                       "printf '#!%s\\necho %s\\n' " sh " " name " > $out/bin/run; chmod 555 $out/bin/run; "
                       "ln -s ../share/id $out/share/id-link; "
                       (if dep? (string-append "echo " dep-out " > $out/share/dep; ") "")
                       (if (= 0 (modulo i 5)) "echo $out > $out/share/self; " "")
                       (if text-ref? (string-append "echo " t2 " > $out/share/text-ref; ") ""))))
                 (drv (mkdrv name script
                             #:inputs (if dep? (list (derivation-input prev)) '())
                             #:sources (if text-ref? (list bb t2) (list bb)))))
            (loop (+ i 1) drv (cons drv acc))))))

  ;; multi-output derivations: lib refers to out, doc refers to nothing,
  ;; out refers to a text item and (in gen b) to a gen-a output.
  (define (multi k extra-input)
    (mkdrv (format #f "multi-~a-~a" gen k)
           (string-append
            "mkdir -p $out/bin $lib/lib $doc/share; "
            "echo out " gen (number->string k) " > $out/bin/x; chmod 555 $out/bin/x; "
            "echo $out > $lib/lib/points-to-out; "
            "printf '" common-text "' > $lib/lib/COMMON; "
            "printf '" common-text "' > $doc/share/COMMON; "
            "seq 1 4000 > $doc/share/BIGCOMMON; "
            "echo $lib > $lib/lib/self; "
            "echo " t1 " > $out/text; "
            (if extra-input (string-append "echo " extra-input " > $out/extra; ") ""))
           #:outputs '("out" "lib" "doc")
           #:sources (list bb t1)))
  (define multi-drvs
    (list (multi 1 #f)
          (multi 2 (derivation->output-path (first simple-drvs)))))

  ;; consumer of a multi-output derivation's lib output only
  (define consumer
    (let ((m (first multi-drvs)))
      (mkdrv (string-append "consumer-" gen)
             (string-append "mkdir -p $out; echo "
                            (derivation->output-path m "lib") " > $out/uses-lib")
             #:inputs (list (derivation-input m '("lib"))))))

  ;; fixed-output derivation (flat sha256 of "fixed <gen>\n")
  (define fo-content (string-append "fixed " gen "\n"))
  (define fo
    (mkdrv (string-append "fixed-" gen ".txt")
           (string-append "echo fixed " gen " > $out")
           #:hash (sha256 (string->utf8 fo-content)) #:hash-algo 'sha256))

  ;; generation b: a derivation depending on generation a outputs
  (define cross
    (if (string=? gen "b")
        (let ((a-simple (mkdrv "simple-a-00"
                               (string-append "echo simple-a-00 > $out"))))
          (list (mkdrv "cross-b"
                       (string-append "mkdir -p $out; echo "
                                      (derivation->output-path a-simple)
                                      " > $out/uses-a")
                       #:inputs (list (derivation-input a-simple)))))
        '()))

  (define all-drvs (append simple-drvs multi-drvs (list consumer fo) cross
                          (if (string=? gen "b") (list (make-nondet)) '())))
  (build-derivations store all-drvs)
  (for-each (lambda (drv)
              (note "drv" (derivation-file-name drv))
              (for-each (lambda (o)
                          (note (if (eq? drv fo) "fo" "out") (cdr o)))
                        (derivation->output-paths drv)))
            all-drvs)
  (close-port out-port)
  (format #t "populated generation ~a: ~a derivations~%" gen (length all-drvs)))
