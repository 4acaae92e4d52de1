#!/usr/bin/perl
# Gearman::Client (libgearman-client-perl) driven by a JSON request on stdin; one JSON event
# per line on stdout (see tests/interop/harness.py for the request and event shapes).
use strict;
use warnings;
use Gearman::Client;
use JSON::PP;
use IO::Handle;

STDOUT->autoflush(1);
my $req = decode_json(do { local $/; <STDIN> });
my $port = $req->{port};
my $server = "127.0.0.1:$port";
my $client = Gearman::Client->new(job_servers => [$server],
                                  exceptions => $req->{exceptions} ? 1 : 0,
                                  ($req->{prefix} ? (prefix => $req->{prefix}) : ()));
my $json = JSON::PP->new->canonical;

sub emit { print $json->encode({@_}), "\n"; }
sub short { my $h = shift; $h =~ s{^.*//}{}; return $h; }

sub opts_for {
    my ($i, $t) = @_;
    my %o = (
        on_complete  => sub { emit(ev => "complete", i => $i, hex => unpack("H*", ${ $_[0] })) },
        on_fail      => sub { emit(ev => "fail", i => $i) },
        on_status    => sub { emit(ev => "status", i => $i, n => 0 + $_[0], d => 0 + $_[1]) },
        on_data      => sub { emit(ev => "data", i => $i, hex => unpack("H*", ${ $_[0] })) },
        on_warning   => sub { emit(ev => "warning", i => $i, hex => unpack("H*", ${ $_[0] })) },
        on_exception => sub { emit(ev => "exception", i => $i, hex => unpack("H*", $_[0])) },
        timeout      => $req->{timeout} || 20,
    );
    $o{uniq} = $t->{unique} if defined $t->{unique};
    $o{priority} = $t->{priority} if $t->{priority};
    return \%o;
}

my $mode = $req->{mode};
if ($mode eq "do") {
    my $i = 0;
    for my $t (@{ $req->{tasks} }) {
        my $arg = pack("H*", $t->{arg});
        my %o = (timeout => $req->{timeout} || 20);
        $o{uniq} = $t->{unique} if defined $t->{unique};
        $o{priority} = $t->{priority} if $t->{priority};
        if ($t->{background}) {
            my $h = $client->dispatch_background($t->{fn}, \$arg, \%o);
            emit(ev => (defined $h ? "created" : "fail"), i => $i, handle => short($h // ""));
        } else {
            my $ref = $client->do_task($t->{fn}, \$arg, \%o);
            if (defined $ref) { emit(ev => "complete", i => $i, hex => unpack("H*", $$ref)) }
            else { emit(ev => "fail", i => $i) }
        }
        $i++;
    }
} elsif ($mode eq "tasks") {
    my $ts = $client->new_task_set;
    my $i = 0;
    for my $t (@{ $req->{tasks} }) {
        my $arg = pack("H*", $t->{arg});
        my $o = opts_for($i, $t);
        if ($t->{background}) {
            my $h = $client->dispatch_background($t->{fn}, \$arg, $o);
            emit(ev => "created", i => $i, handle => short($h // ""));
        } else {
            # add_task returns once JOB_CREATED has come back
            my $h = $ts->add_task($t->{fn}, \$arg, $o);
            emit(ev => "created", i => $i, handle => short($h // ""));
        }
        $i++;
    }
    $ts->wait(timeout => $req->{timeout} || 20);
} elsif ($mode eq "status") {
    my $i = 0;
    for my $h (@{ $req->{handles} }) {
        my $st = $client->get_status("$server//$h");
        if ($st) {
            emit(ev => "jobstatus", i => $i, known => ($st->known ? JSON::PP::true : JSON::PP::false),
                 running => ($st->running ? JSON::PP::true : JSON::PP::false),
                 n => 0 + ($st->progress ? $st->progress->[0] : 0),
                 d => 0 + ($st->progress ? $st->progress->[1] : 0));
        } else {
            emit(ev => "jobstatus", i => $i, known => JSON::PP::false, running => JSON::PP::false,
                 n => 0, d => 0);
        }
        $i++;
    }
} elsif ($mode eq "server_status") {
    # the admin "status" as Gearman::Client parses it: {function => {queued, running, capable}}
    my $all = $client->get_job_server_status;
    emit(ev => "server_status", functions => $all->{$server} || {});
} else {
    die "unknown mode $mode";
}
emit(ev => "end");
